package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// runRow holds the columns of a run's row (runColumns) as scanned.
type runRow struct {
	workflow, version, status string
	priority                  int
	input, result             []byte
	failedNode, reason        string
	parent, parentNode        string
	metadata                  []byte
	created, updated          int64
}

func (r *runRow) dest() []any {
	return []any{&r.workflow, &r.version, &r.status, &r.priority, &r.input, &r.result, &r.failedNode, &r.reason,
		&r.parent, &r.parentNode, &r.metadata, &r.created, &r.updated}
}

func (r *runRow) run(id string) (*backend.Run, error) {
	run := &backend.Run{
		ID: id, Workflow: r.workflow, Version: r.version, Status: backend.Status(r.status), Priority: r.priority,
		Input: r.input, Result: r.result, FailedNode: r.failedNode, Reason: r.reason,
		Parent: r.parent, ParentNode: r.parentNode, Created: fromNanos(r.created), Updated: fromNanos(r.updated),
	}
	if r.metadata != nil {
		if err := json.Unmarshal(r.metadata, &run.Metadata); err != nil {
			return nil, fmt.Errorf("metadata of run %s: %w", id, err)
		}
	}
	return run, nil
}

// runArgs returns the values of runColumns for r.
func runArgs(r *backend.Run) ([]any, error) {
	var meta []byte
	if r.Metadata != nil {
		var err error
		if meta, err = json.Marshal(r.Metadata); err != nil {
			return nil, fmt.Errorf("metadata of run %s: %w", r.ID, err)
		}
	}
	return []any{r.Workflow, r.Version, string(r.Status), r.Priority, r.Input, r.Result, r.FailedNode, r.Reason,
		r.Parent, r.ParentNode, meta, nanos(r.Created), nanos(r.Updated)}, nil
}

// sameArg reports whether two values of runArgs are equal.
func sameArg(a, b any) bool {
	if x, ok := a.([]byte); ok {
		y := b.([]byte)
		return bytes.Equal(x, y) && (x == nil) == (y == nil)
	}
	return a == b
}

// CreateRun creates r and runs init in the same transaction. It reports created=false,
// and changes nothing, when a run with r.ID already exists. A zero r.Created is set to
// now; Updated is set to now.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	var created bool
	var t *txn
	err := b.write(ctx, "create run "+r.ID, func(ctx context.Context, tx *sql.Tx) error {
		created, t = false, nil
		var exists bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?)`, r.ID).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		rec := *r
		now := time.Now()
		if rec.Created.IsZero() {
			rec.Created = now
		}
		t = newTxn(ctx, b, tx, &rec, true)
		if init != nil {
			if err := init(t); err != nil {
				return t.fail(err)
			}
		}
		rec.ID, rec.Updated = r.ID, now
		args, err := runArgs(&rec)
		if err != nil {
			return errTxFunc{fmt.Errorf("sqlite: create run %s: %w", r.ID, err)}
		}
		if _, err := tx.StmtContext(ctx, b.stmts.insertRun).ExecContext(ctx, append([]any{rec.ID}, args...)...); err != nil {
			return err
		}
		if err := t.flush(); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if created {
		b.afterCommit(t, false)
	}
	return created, nil
}

// Update runs fn as one atomic transition of run id, inside one write transaction: fn's
// reads go to the file, its writes and enqueues are buffered and written at the end,
// with the run's record, or not at all when fn fails. fn runs again if SQLite reports
// the file busy beyond busy_timeout and the transaction is retried.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	var t *txn
	var wasFinal bool
	err := b.write(ctx, "update run "+id, func(ctx context.Context, tx *sql.Tx) error {
		t = nil
		var row runRow
		if err := tx.StmtContext(ctx, b.stmts.selectRun).QueryRowContext(ctx, id).Scan(row.dest()...); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return errTxFunc{backend.ErrNotFound}
			}
			return err
		}
		rec, err := row.run(id)
		if err != nil {
			return errTxFunc{fmt.Errorf("sqlite: update run %s: %w", id, err)}
		}
		wasFinal = rec.Status.Final()
		before, err := runArgs(rec)
		if err != nil {
			return errTxFunc{fmt.Errorf("sqlite: update run %s: %w", id, err)}
		}
		t = newTxn(ctx, b, tx, rec, false)
		if err := fn(t); err != nil {
			return t.fail(err)
		}
		rec.ID, rec.Updated = id, time.Now()
		after, err := runArgs(rec)
		if err != nil {
			return errTxFunc{fmt.Errorf("sqlite: update run %s: %w", id, err)}
		}
		var changed uint16
		args := make([]any, 0, len(after)+1)
		for i := range after {
			if i == len(after)-1 || !sameArg(before[i], after[i]) { // updated, the last, always changes
				changed |= 1 << i
				args = append(args, after[i])
			}
		}
		st, err := b.stmts.updateRunStmt(ctx, b.db, changed)
		if err != nil {
			return err
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, append(args, id)...); err != nil {
			return err
		}
		return t.flush()
	})
	if err != nil {
		return err
	}
	b.afterCommit(t, wasFinal)
	return nil
}

// afterCommit wakes this process's waiters for what a committed transition did.
func (b *Backend) afterCommit(t *txn, wasFinal bool) {
	if len(t.jobs) > 0 {
		b.notify()
	}
	if !wasFinal && t.run.Status.Final() {
		b.runFinished(t.run.ID)
	}
}

// Read returns the run and the values of the given keys (absent keys are left out), as
// of one moment.
func (b *Backend) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	if err := b.checkOpen(); err != nil {
		return nil, nil, err
	}
	vals := make(map[string][]byte, len(keys))
	if len(keys) == 0 {
		var row runRow
		if err := b.stmts.selectRun.QueryRowContext(ctx, id).Scan(row.dest()...); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil, nil, backend.ErrNotFound
			}
			return nil, nil, b.readErr(ctx, "read run "+id, err)
		}
		run, err := row.run(id)
		if err != nil {
			return nil, nil, fmt.Errorf("sqlite: read run %s: %w", id, err)
		}
		return run, vals, nil
	}
	keysJSON, err := json.Marshal(keys)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite: read run %s: %w", id, err)
	}
	rows, err := b.stmts.readRun.QueryContext(ctx, id, string(keysJSON))
	if err != nil {
		return nil, nil, b.readErr(ctx, "read run "+id, err)
	}
	defer rows.Close()
	var run *backend.Run
	for rows.Next() {
		var tag int
		var row runRow
		if err := rows.Scan(append([]any{&tag}, row.dest()...)...); err != nil {
			return nil, nil, b.readErr(ctx, "read run "+id, err)
		}
		if tag == 1 {
			vals[row.workflow] = nonNil(row.input)
			continue
		}
		if run, err = row.run(id); err != nil {
			return nil, nil, fmt.Errorf("sqlite: read run %s: %w", id, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, b.readErr(ctx, "read run "+id, err)
	}
	if run == nil {
		return nil, nil, backend.ErrNotFound
	}
	return run, vals, nil
}

// readErr wraps the error of a read.
func (b *Backend) readErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("sqlite: %s: %w", what, ctx.Err())
	}
	if b.closed.Load() {
		return backend.ErrClosed
	}
	return fmt.Errorf("sqlite: %s in %s: %w", what, b.path, err)
}

// ListRuns lists runs matching f, newest (by creation) first.
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	var where []string
	var args []any
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, string(f.Status))
	}
	if f.Workflow != "" {
		where, args = append(where, "workflow = ?"), append(args, f.Workflow)
	}
	if !f.UpdatedBefore.IsZero() {
		where, args = append(where, "updated < ?"), append(args, f.UpdatedBefore.UnixNano())
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT id, ` + runColumns + ` FROM runs`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created DESC, id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := b.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, b.readErr(ctx, "list runs", err)
	}
	defer rows.Close()
	var out []*backend.Run
	for rows.Next() {
		var id string
		var row runRow
		if err := rows.Scan(append([]any{&id}, row.dest()...)...); err != nil {
			return nil, b.readErr(ctx, "list runs", err)
		}
		run, err := row.run(id)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list runs: %w", err)
		}
		out = append(out, run)
	}
	if err := rows.Err(); err != nil {
		return nil, b.readErr(ctx, "list runs", err)
	}
	return out, nil
}

// WaitRun blocks until run id is no longer running or ctx is done. A run finished by
// a transition of this Backend wakes it at once; for runs finished by other processes,
// one poller reads the status of every awaited run every 10 ms (see pollRuns).
func (b *Backend) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	for {
		ch, release := b.watchRun(id)
		r, _, err := b.Read(ctx, id)
		if err != nil || r.Status.Final() {
			release()
			return r, err
		}
		select {
		case <-ch:
			release()
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		case <-b.done:
			release()
			return nil, backend.ErrClosed
		}
	}
}

// watchRun returns a channel closed when run id is seen finished (or gone), and the
// function that stops watching.
func (b *Backend) watchRun(id string) (<-chan struct{}, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.waiters[id]
	if w == nil {
		w = &runWaiters{ch: make(chan struct{})}
		b.waiters[id] = w
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	w.n++
	return w.ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if w.n--; w.n == 0 && b.waiters[id] == w {
			delete(b.waiters, id)
		}
	}
}

// runPoll is how often pollRuns looks at the awaited runs.
const runPoll = 10 * time.Millisecond

// pollRuns wakes the WaitRun calls of runs that another process finished (or deleted):
// while there are any, it reads the status of every awaited run in one query every
// runPoll.
func (b *Backend) pollRuns() {
	defer b.bg.Done()
	t := time.NewTicker(runPoll)
	defer t.Stop()
	for {
		b.mu.Lock()
		ids := make([]string, 0, len(b.waiters))
		for id := range b.waiters {
			ids = append(ids, id)
		}
		b.mu.Unlock()
		if len(ids) == 0 {
			select {
			case <-b.kick:
			case <-b.done:
				return
			}
			continue
		}
		select {
		case <-t.C:
		case <-b.done:
			return
		}
		running, err := b.running(ids)
		if err != nil {
			continue // the waiters' own reads report errors
		}
		for _, id := range ids {
			if !running[id] {
				b.runFinished(id)
			}
		}
	}
}

// running returns which of the runs ids are running.
func (b *Backend) running(ids []string) (map[string]bool, error) {
	idsJSON, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	rows, err := b.stmts.running.Query(string(idsJSON))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	running := make(map[string]bool, len(ids))
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		running[id] = true
	}
	return running, rows.Err()
}

// runFinished wakes the WaitRun calls of run id.
func (b *Backend) runFinished(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.waiters[id]; w != nil {
		close(w.ch)
		delete(b.waiters, id)
	}
}

// ExpireRuns deletes every run in a final status that was last updated before before,
// with all its state, and returns how many runs it deleted (backend.Expirer). It keeps
// a finished child run of a subflow while its parent still runs, and deletes in short
// transactions of a few hundred runs.
func (b *Backend) ExpireRuns(ctx context.Context, before time.Time) (int, error) {
	const batch = 200
	cutoff := before.UnixNano()
	total := 0
	for {
		n := 0
		err := b.write(ctx, "expire finished runs", func(ctx context.Context, tx *sql.Tx) error {
			n = 0
			rows, err := tx.QueryContext(ctx, `SELECT id FROM runs
WHERE status IN ('completed', 'failed', 'cancelled') AND updated < ?
	AND (parent = '' OR NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = runs.parent AND p.status = 'running'))
LIMIT ?`, cutoff, batch)
			if err != nil {
				return err
			}
			var ids []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				ids = append(ids, id)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			for _, id := range ids {
				if _, err := tx.ExecContext(ctx, `DELETE FROM run_kv WHERE run = ?`, id); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `DELETE FROM runs WHERE id = ?`, id); err != nil {
					return err
				}
			}
			n = len(ids)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < batch {
			return total, nil
		}
	}
}

// ExpireDeadLetters deletes the jobs dead-lettered before before and returns how many.
func (b *Backend) ExpireDeadLetters(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := b.write(ctx, "delete old dead letters", func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE dead = 1 AND dead_at < ?`, before.UnixNano())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// cleanupLoop expires finished runs and dead letters older than the TTL until Close.
func (b *Backend) cleanupLoop() {
	defer b.bg.Done()
	every := min(max(b.opts.ttl/10, time.Second), 10*time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-b.done:
			case <-ctx.Done():
			}
			cancel()
		}()
		before := time.Now().Add(-b.opts.ttl)
		_, err := b.ExpireRuns(ctx, before)
		if err == nil {
			_, err = b.ExpireDeadLetters(ctx, before)
		}
		cancel()
		if err != nil && !b.closed.Load() {
			slog.Warn("flowgen: sqlite: expiring old runs failed", "file", b.path, "err", err)
		}
		select {
		case <-b.done:
			return
		case <-t.C:
		}
	}
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
