package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
)

// The SQL of the hot paths, prepared once per connection.
const (
	jobColumns = `id, run, workflow, version, kind, node, from_node, attempt, priority, not_before, err`

	sqlInsertJobs = `INSERT INTO jobs (` + jobColumns + `, visible_at) VALUES `
	sqlJobRow     = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

	// sqlLease leases up to ?4 visible jobs, highest priority first and FIFO among
	// equals, in one statement of a write transaction, so two processes never lease
	// the same job. (The CAST hides the limit from the query
	// planner, which would otherwise prepare the statement again for each new value.)
	sqlLease = `UPDATE jobs SET lease_token = ?1, visible_at = ?2, deliveries = deliveries + 1
WHERE seq IN (
	SELECT seq FROM jobs INDEXED BY jobs_ready
	WHERE dead = 0 AND visible_at <= ?3
	ORDER BY priority DESC, seq LIMIT CAST(?4 AS INTEGER))
RETURNING seq, deliveries, ` + jobColumns

	// sqlNextDue is when the next job is or was visible (NULL for an empty queue).
	sqlNextDue = `SELECT min(visible_at) FROM jobs WHERE dead = 0`

	sqlAck        = `DELETE FROM jobs WHERE seq = ? AND lease_token = ? AND dead = 0`
	sqlExtend     = `UPDATE jobs SET visible_at = ? WHERE seq = ? AND lease_token = ? AND dead = 0`
	sqlDeadLetter = `UPDATE jobs SET dead = 1, dead_at = ?, reason = ?, lease_token = NULL WHERE seq = ? AND lease_token = ? AND dead = 0`

	runColumns = `workflow, version, status, priority, input, result, failed_node, reason, parent, parent_node, metadata, created, updated`

	sqlInsertRun = `INSERT INTO runs (id, ` + runColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`
	sqlSelectRun = `SELECT ` + runColumns + ` FROM runs WHERE id = ?`

	// sqlReadRun reads a run and some of its keys in one statement, so one snapshot:
	// the run's row first (tag 0), then the keys found (tag 1, key, value).
	sqlReadRun = `SELECT 0, ` + runColumns + ` FROM runs WHERE id = ?1
UNION ALL
SELECT 1, key, '', '', 0, value, NULL, '', '', '', '', NULL, 0, 0 FROM run_kv
WHERE run = ?1 AND key IN (SELECT value FROM json_each(?2))`

	sqlRunning = `SELECT id FROM runs WHERE status = 'running' AND id IN (SELECT value FROM json_each(?))`

	sqlGetKey  = `SELECT value FROM run_kv WHERE run = ? AND key = ?`
	sqlGetKeys = `SELECT key, value FROM run_kv WHERE run = ? AND key IN (SELECT value FROM json_each(?))`
	sqlPutKeys = `INSERT INTO run_kv (run, key, value) VALUES `
	sqlKeyRow  = `(?, ?, ?)`
	sqlPutTail = ` ON CONFLICT (run, key) DO UPDATE SET value = excluded.value`
	sqlDelKey  = `DELETE FROM run_kv WHERE run = ? AND key = ?`
)

// statements are the prepared statements of the hot paths.
type statements struct {
	lease, nextDue, ack, extend, deadLetter *sql.Stmt
	insertRun, selectRun, readRun, running  *sql.Stmt
	getKey, getKeys, delKey                 *sql.Stmt

	mu        sync.Mutex
	updateRun map[uint16]*sql.Stmt // by the columns they set; see updateRunStmt
	rows      map[rowsKey]*sql.Stmt
}

// rowsKey names a statement of rowsStmt: its kind and how many rows it writes.
type rowsKey struct {
	insert string // sqlInsertJobs or sqlPutKeys
	n      int
}

// maxRows is the most rows one statement of rowsStmt writes.
const maxRows = 16

func (s *statements) all() []struct {
	p   **sql.Stmt
	sql string
} {
	return []struct {
		p   **sql.Stmt
		sql string
	}{
		{&s.lease, sqlLease}, {&s.nextDue, sqlNextDue}, {&s.ack, sqlAck},
		{&s.extend, sqlExtend}, {&s.deadLetter, sqlDeadLetter}, {&s.insertRun, sqlInsertRun},
		{&s.selectRun, sqlSelectRun}, {&s.readRun, sqlReadRun}, {&s.running, sqlRunning},
		{&s.getKey, sqlGetKey}, {&s.getKeys, sqlGetKeys}, {&s.delKey, sqlDelKey},
	}
}

func (s *statements) prepare(ctx context.Context, db *sql.DB) error {
	for _, st := range s.all() {
		p, err := db.PrepareContext(ctx, st.sql)
		if err != nil {
			return fmt.Errorf("prepare %q: %w", st.sql, err)
		}
		*st.p = p
	}
	return nil
}

func (s *statements) close() {
	for _, st := range s.all() {
		if *st.p != nil {
			(*st.p).Close()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.updateRun {
		st.Close()
	}
	for _, st := range s.rows {
		st.Close()
	}
}

// rowsStmt returns the statement that writes n rows (at most maxRows) with insert:
// sqlInsertJobs (12 values a row) or sqlPutKeys (run, key and value). One statement
// of several rows costs about as much as one of one.
func (s *statements) rowsStmt(ctx context.Context, db *sql.DB, insert string, n int) (*sql.Stmt, error) {
	k := rowsKey{insert, n}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.rows[k]; st != nil {
		return st, nil
	}
	row, tail := sqlJobRow, ""
	if insert == sqlPutKeys {
		row, tail = sqlKeyRow, sqlPutTail
	}
	q := insert + strings.Repeat(row+", ", n-1) + row + tail
	st, err := db.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", q, err)
	}
	if s.rows == nil {
		s.rows = map[rowsKey]*sql.Stmt{}
	}
	s.rows[k] = st
	return st, nil
}

// writeRows writes rows, each of the statement's row length, with insert (see
// rowsStmt), maxRows at a time.
func (s *statements) writeRows(ctx context.Context, db *sql.DB, tx *sql.Tx, insert string, rows [][]any) error {
	for len(rows) > 0 {
		n := min(len(rows), maxRows)
		st, err := s.rowsStmt(ctx, db, insert, n)
		if err != nil {
			return err
		}
		var args []any
		for _, r := range rows[:n] {
			args = append(args, r...)
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// runColumnNames are the columns of runColumns, in order.
var runColumnNames = strings.Split(runColumns, ", ")

// updateRunStmt returns the statement that sets the columns of runColumns whose bits
// are set in changed, and updated, of the run with the id given last. Setting only
// what changed spares SQLite rewriting the entries of indexes on the other columns.
func (s *statements) updateRunStmt(ctx context.Context, db *sql.DB, changed uint16) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.updateRun[changed]; st != nil {
		return st, nil
	}
	var set []string
	for i, col := range runColumnNames {
		if changed&(1<<i) != 0 || col == "updated" {
			set = append(set, col+" = ?")
		}
	}
	st, err := db.PrepareContext(ctx, `UPDATE runs SET `+strings.Join(set, ", ")+` WHERE id = ?`)
	if err != nil {
		return nil, err
	}
	if s.updateRun == nil {
		s.updateRun = map[uint16]*sql.Stmt{}
	}
	s.updateRun[changed] = st
	return st, nil
}
