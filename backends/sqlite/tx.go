package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/flowgen/flowgen/runtime/backend"
)

// txn is the backend.Tx of one run inside a write transaction. Values are read from the
// file on first use and cached; writes and enqueues are buffered and written by flush,
// so a transition costs one statement per key it reads and per key it changes, however
// large the run's state.
type txn struct {
	ctx context.Context
	b   *Backend
	tx  *sql.Tx
	run *backend.Run
	// fresh is true for a run created in this transaction: it has no stored keys.
	fresh bool

	// failed is the first error of a read from the file: the transaction may be
	// gone with it, so the transition must fail with it too (see fail).
	failed error

	getKey *sql.Stmt // the transaction's getKey statement, once used

	loaded map[string][]byte // values read from the file; nil for absent
	writes map[string][]byte // values written; nil for deleted
	order  []string          // keys of writes, in the order first written
	jobs   []backend.Job
}

func newTxn(ctx context.Context, b *Backend, tx *sql.Tx, run *backend.Run, fresh bool) *txn {
	return &txn{ctx: ctx, b: b, tx: tx, run: run, fresh: fresh,
		loaded: make(map[string][]byte, 8), writes: make(map[string][]byte, 8)}
}

// fail returns the error of a transition whose function returned err: err itself,
// unchanged and never retried (errTxFunc), unless a read from the file failed, which
// may have ended the SQL transaction.
func (t *txn) fail(err error) error {
	if t.failed != nil {
		return t.failed
	}
	return errTxFunc{err}
}

// Run is the run's record; changes to it are saved with the transition.
func (t *txn) Run() *backend.Run { return t.run }

// load reads the keys not yet known from the file.
func (t *txn) load(keys []string) error {
	if t.failed != nil {
		return t.failed
	}
	if err := t.read(keys); err != nil {
		t.failed = err
		return err
	}
	return nil
}

func (t *txn) read(keys []string) error {
	var missing []string
	for _, k := range keys {
		if _, ok := t.writes[k]; ok {
			continue
		}
		if _, ok := t.loaded[k]; ok {
			continue
		}
		t.loaded[k] = nil
		if !t.fresh {
			missing = append(missing, k)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		var v []byte
		if t.getKey == nil {
			t.getKey = t.tx.StmtContext(t.ctx, t.b.stmts.getKey)
		}
		err := t.getKey.QueryRowContext(t.ctx, t.run.ID, missing[0]).Scan(&v)
		switch {
		case err == nil:
			t.loaded[missing[0]] = nonNil(v)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlite: read state of run %s: %w", t.run.ID, err)
		}
		return nil
	}
	keysJSON, err := json.Marshal(missing)
	if err != nil {
		return err
	}
	rows, err := t.tx.StmtContext(t.ctx, t.b.stmts.getKeys).QueryContext(t.ctx, t.run.ID, string(keysJSON))
	if err != nil {
		return fmt.Errorf("sqlite: read state of run %s: %w", t.run.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return fmt.Errorf("sqlite: read state of run %s: %w", t.run.ID, err)
		}
		t.loaded[k] = nonNil(v)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: read state of run %s: %w", t.run.ID, err)
	}
	return nil
}

// get returns key's current value in the transaction; load must have seen key.
func (t *txn) get(k string) []byte {
	if v, ok := t.writes[k]; ok {
		return v
	}
	return t.loaded[k]
}

func (t *txn) set(k string, v []byte) {
	if _, seen := t.writes[k]; !seen {
		t.order = append(t.order, k)
	}
	t.writes[k] = v
}

// Get returns the values of keys; absent keys are nil.
func (t *txn) Get(keys ...string) ([][]byte, error) {
	if err := t.load(keys); err != nil {
		return nil, err
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = t.get(k)
	}
	return out, nil
}

// PutIfAbsent stores key=val unless key exists, and reports whether it stored.
func (t *txn) PutIfAbsent(key string, val []byte) (bool, error) {
	if err := t.load([]string{key}); err != nil {
		return false, err
	}
	if t.get(key) != nil {
		return false, nil
	}
	t.set(key, nonNil(val))
	return true, nil
}

// Put stores key=val.
func (t *txn) Put(key string, val []byte) error {
	t.set(key, nonNil(val))
	return nil
}

// Delete removes keys.
func (t *txn) Delete(keys ...string) error {
	for _, k := range keys {
		t.set(k, nil)
	}
	return nil
}

// Incr adds delta to the integer at key (absent is 0) and returns the new value.
func (t *txn) Incr(key string, delta int64) (int64, error) {
	if err := t.load([]string{key}); err != nil {
		return 0, err
	}
	var n int64
	if v := t.get(key); v != nil {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("sqlite: run %s: key %q holds %q, not an integer", t.run.ID, key, v)
		}
	}
	if delta != 0 {
		n += delta
		t.set(key, strconv.AppendInt(nil, n, 10))
	}
	return n, nil
}

// Enqueue adds jobs when the transition commits.
func (t *txn) Enqueue(jobs ...backend.Job) { t.jobs = append(t.jobs, jobs...) }

// flush writes the buffered changes and jobs in the transaction.
func (t *txn) flush() error {
	var del *sql.Stmt
	var puts [][]any
	for _, k := range t.order {
		v := t.writes[k]
		if v != nil {
			puts = append(puts, []any{t.run.ID, k, v})
			continue
		}
		if old, known := t.loaded[k]; t.fresh || (known && old == nil) {
			continue // it never existed
		}
		if del == nil {
			del = t.tx.StmtContext(t.ctx, t.b.stmts.delKey)
		}
		if _, err := del.ExecContext(t.ctx, t.run.ID, k); err != nil {
			return fmt.Errorf("delete key %q of run %s: %w", k, t.run.ID, err)
		}
	}
	if err := t.b.stmts.writeRows(t.ctx, t.b.db, t.tx, sqlPutKeys, puts); err != nil {
		return fmt.Errorf("write the state of run %s: %w", t.run.ID, err)
	}
	if len(t.jobs) == 0 {
		return nil
	}
	return t.b.insertJobs(t.ctx, t.tx, t.jobs)
}
