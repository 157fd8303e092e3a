package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flowgen/flowgen/runtime/backend"
)

const runCols = `id, workflow, version, status, priority, input, result, failed_node, reason, parent, parent_node, metadata, created, updated`

// scanRun reads runCols, then extra.
func scanRun(row pgx.Row, extra ...any) (*backend.Run, error) {
	var (
		r      backend.Run
		status string
		meta   []byte
	)
	dest := append([]any{&r.ID, &r.Workflow, &r.Version, &status, &r.Priority, &r.Input, &r.Result,
		&r.FailedNode, &r.Reason, &r.Parent, &r.ParentNode, &meta, &r.Created, &r.Updated}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	r.Status = backend.Status(status)
	if meta != nil {
		if err := json.Unmarshal(meta, &r.Metadata); err != nil {
			return nil, fmt.Errorf("run %s: metadata: %w", r.ID, err)
		}
	}
	return &r, nil
}

// metadataArg is the jsonb argument for m: NULL for nil.
func metadataArg(m map[string]string) any {
	if m == nil {
		return nil
	}
	data, _ := json.Marshal(m) // a map of strings always encodes
	return data
}

// nonNil turns a loaded empty value into a present one: Snapshot and the runtime read
// nil as absent.
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// createRunSQL inserts a run unless it exists, and its keys and jobs only with it.
var createRunSQL = `WITH r AS (
	INSERT INTO runs (` + runCols + `, rev)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14, $31)
	ON CONFLICT (id) DO NOTHING
	RETURNING id),
kv AS (
	INSERT INTO run_kv (run, key, value)
	SELECT r.id, t.key, t.value FROM r, unnest($15::text[], $16::bytea[]) AS t(key, value)
	ON CONFLICT (run, key) DO UPDATE SET value = excluded.value),
j AS (` + insertJobsSQL(17, "r, ") + ` RETURNING 1)
SELECT count(*),
	(SELECT count(*) FROM (SELECT pg_notify($29, p) FROM unnest($30::text[]) AS p WHERE EXISTS (SELECT 1 FROM j)) AS n)
FROM r`

// runArgs are the values of runCols for r.
func runArgs(r *backend.Run) []any {
	return []any{r.ID, r.Workflow, r.Version, string(r.Status), r.Priority, r.Input, r.Result,
		r.FailedNode, r.Reason, r.Parent, r.ParentNode, metadataArg(r.Metadata), r.Created, r.Updated}
}

// CreateRun creates r and runs init in the same transition, as one statement: the run row
// is inserted unless it exists, and init's keys and jobs only with it. It reports
// created=false, and changes nothing, when a run with r.ID already exists. init runs
// before the database is asked, on an empty state, whether or not the run exists.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	if err := b.check(); err != nil {
		return false, err
	}
	rec := *r
	now := time.Now()
	if rec.Created.IsZero() {
		rec.Created = now
	}
	snap := backend.NewSnapshot(&rec, nil)
	if init != nil {
		if err := init(snap); err != nil {
			return false, err
		}
	}
	run := snap.Run()
	run.ID = r.ID
	run.Updated = now
	changes, jobs := snap.Changes()
	var keys []string
	var vals [][]byte
	for _, c := range changes {
		if c.Value != nil { // deleting from a new run deletes nothing
			keys = append(keys, c.Key)
			vals = append(vals, c.Value)
		}
	}
	rows := newJobRows(jobs)
	args := append(runArgs(run), keys, vals)
	args = append(args, rows.args()...)
	rev := rand.Int64()
	args = append(args, b.channel, jobPayloads(rows.delays), rev)
	var created, notified int
	for attempt := 0; ; attempt++ {
		b.meter.calls(1, 1)
		err := b.pool.QueryRow(ctx, createRunSQL, args...).Scan(&created, &notified)
		if err == nil {
			break
		}
		if !retryable(err) || attempt >= maxRetries {
			return false, b.wrap("create run "+r.ID, err)
		}
		if err := pause(ctx, attempt); err != nil {
			return false, err
		}
	}
	if created == 0 {
		return false, nil
	}
	if !run.Status.Final() {
		b.cache.put(r.ID, rev, make(map[string][]byte, len(keys)), 0, changes)
	}
	if len(jobs) > 0 {
		b.wakeLocal(rows.delays)
	}
	return true, nil
}

// maxRetries bounds the retries of a transaction that failed on a deadlock or a
// serialization failure.
const maxRetries = 10

// retryable reports whether err is a deadlock or a serialization failure, after which
// the whole transaction can be tried again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// pause waits before retry attempt+1.
func pause(ctx context.Context, attempt int) error {
	t := time.NewTimer(time.Duration(attempt+1) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fnError carries an error returned by a transition's function, which Update returns
// as it is and never retries.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

const (
	lockRunSQL = `SELECT ` + runCols + `, rev FROM runs WHERE id = $1 FOR UPDATE`
	// loadKVSQL loads a run's state unless the run is at revision $2, whose state this
	// process has cached. It runs after lockRunSQL, under the lock, so both see the
	// same revision.
	loadKVSQL = `SELECT key, value FROM run_kv WHERE run = $1
	AND NOT EXISTS (SELECT 1 FROM runs WHERE id = $1 AND rev = $2)`
)

// writeSQL writes a transition in one statement: the changed keys ($15, $16), the
// deleted keys ($17), the jobs ($18…), the run row ($1…$14) and the notifications
// ($30 on channel $31), and sets the run's revision to $32. Empty arrays write nothing.
var writeSQL = `WITH
up AS (
	INSERT INTO run_kv (run, key, value)
	SELECT $1, t.key, t.value FROM unnest($15::text[], $16::bytea[]) AS t(key, value)
	ON CONFLICT (run, key) DO UPDATE SET value = excluded.value),
del AS (
	DELETE FROM run_kv WHERE run = $1 AND key = ANY($17::text[])),
j AS (` + insertJobsSQL(18, "") + `),
r AS (
	UPDATE runs SET workflow = $2, version = $3, status = $4, priority = $5, input = $6, result = $7,
		failed_node = $8, reason = $9, parent = $10, parent_node = $11, metadata = $12::jsonb,
		created = $13, updated = $14, rev = $32
	WHERE id = $1)
SELECT pg_notify($31, p) FROM unnest($30::text[]) AS p`

// Update runs fn as one atomic transition of run id, in one transaction holding the run
// row's lock: two round trips, and fn may run again after a deadlock or a serialization
// failure.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	if err := b.check(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := b.update(ctx, id, fn)
		var fe fnError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &fe):
			return fe.err
		case errors.Is(err, backend.ErrNotFound):
			return err
		case retryable(err) && attempt < maxRetries:
			if err := pause(ctx, attempt); err != nil {
				return err
			}
		default:
			return b.wrap("update run "+id, err)
		}
	}
}

func (b *Backend) update(ctx context.Context, id string, fn func(backend.Tx) error) (err error) {
	unlock, err := b.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	defer func() {
		if err != nil {
			rollback(conn)
		}
	}()

	// Round trip 1: begin, lock the run, load its state unless it is cached.
	cachedRev, cachedKV, cachedSize := b.cache.get(id)
	baseSize := -1 // the loaded state's size, when known
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue(lockRunSQL, id)
	batch.Queue(loadKVSQL, id, cachedRev)
	b.meter.calls(1, 3)
	br := conn.SendBatch(ctx, batch)
	var rev int64
	run, kv, err := func() (*backend.Run, map[string][]byte, error) {
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return nil, nil, err
		}
		run, err := scanRun(br.QueryRow(), &rev)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil, fmt.Errorf("run %s: %w", id, backend.ErrNotFound)
		} else if err != nil {
			return nil, nil, err
		}
		rows, err := br.Query()
		if err != nil {
			return nil, nil, err
		}
		kv := make(map[string][]byte, 32)
		var (
			k string
			v []byte
		)
		n, err := pgx.ForEachRow(rows, []any{&k, &v}, func() error {
			kv[k] = nonNil(v)
			return nil
		})
		b.meter.kvRows.Add(n.RowsAffected())
		if rev == cachedRev && cachedKV != nil {
			kv, baseSize = cachedKV, cachedSize // no rows were loaded
		}
		return run, kv, err
	}()
	if err != nil {
		return err
	}

	wasFinal := run.Status.Final()
	snap := backend.NewSnapshot(run, kv)
	if err := fn(snap); err != nil {
		return fnError{err}
	}
	changes, jobs := snap.Changes()
	r := snap.Run()
	r.ID = id
	r.Updated = time.Now()

	// Round trip 2: write the changes, the jobs and the run; notify; commit.
	var putKeys, delKeys []string
	var putVals [][]byte
	for _, c := range changes {
		if c.Value == nil {
			delKeys = append(delKeys, c.Key)
		} else {
			putKeys = append(putKeys, c.Key)
			putVals = append(putVals, c.Value)
		}
	}
	rows := newJobRows(jobs)
	payloads := jobPayloads(rows.delays)
	finished := !wasFinal && r.Status.Final()
	if finished {
		payloads = append(payloads, "r"+id)
	}
	args := append(runArgs(r), putKeys, putVals, delKeys)
	args = append(args, rows.args()...)
	newRev := rand.Int64()
	args = append(args, payloads, b.channel, newRev)
	batch = &pgx.Batch{}
	batch.Queue(writeSQL, args...)
	batch.Queue("COMMIT")
	b.meter.calls(1, 2)
	if err := conn.SendBatch(ctx, batch).Close(); err != nil {
		return err
	}
	if r.Status.Final() {
		b.cache.drop(id)
	} else {
		b.cache.put(id, newRev, kv, baseSize, changes)
	}
	if len(jobs) > 0 {
		b.wakeLocal(rows.delays)
	}
	if finished {
		b.runs.fire(id)
	}
	return nil
}

// rollback ends a transaction left open on conn by an error; a connection that cannot
// roll back is closed, and the pool drops it.
func rollback(conn *pgxpool.Conn) {
	pc := conn.Conn().PgConn()
	if pc.IsClosed() || pc.TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		conn.Conn().Close(ctx)
	}
}

const (
	readRunSQL     = `SELECT ` + runCols + ` FROM runs WHERE id = $1`
	readRunKeysSQL = `SELECT ` + runCols + `, kv.keys, kv.vals FROM runs
	LEFT JOIN LATERAL (SELECT array_agg(key) AS keys, array_agg(value) AS vals FROM run_kv
		WHERE run = $1 AND key = ANY($2::text[])) AS kv ON true
	WHERE id = $1`
)

// Read returns the run and the values of the given keys (absent keys are left out), in
// one statement.
func (b *Backend) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	if err := b.check(); err != nil {
		return nil, nil, err
	}
	var (
		run  *backend.Run
		err  error
		ks   []string
		vs   [][]byte
		vals = make(map[string][]byte, len(keys))
	)
	b.meter.calls(1, 1)
	if len(keys) == 0 {
		run, err = scanRun(b.pool.QueryRow(ctx, readRunSQL, id))
	} else {
		run, err = scanRun(b.pool.QueryRow(ctx, readRunKeysSQL, id, keys), &ks, &vs)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("run %s: %w", id, backend.ErrNotFound)
	}
	if err != nil {
		return nil, nil, b.wrap("read run "+id, err)
	}
	for i, k := range ks {
		vals[k] = nonNil(vs[i])
	}
	return run, vals, nil
}

// ListRuns lists runs matching f, newest first (by creation, then id).
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	var (
		conds []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Status != "" {
		conds = append(conds, "status = "+arg(string(f.Status)))
	}
	if f.Workflow != "" {
		conds = append(conds, "workflow = "+arg(f.Workflow))
	}
	if !f.UpdatedBefore.IsZero() {
		conds = append(conds, "updated < "+arg(f.UpdatedBefore))
	}
	q := `SELECT ` + runCols + ` FROM runs`
	if len(conds) > 0 {
		q += ` WHERE ` + strings.Join(conds, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q += ` ORDER BY created DESC, id DESC LIMIT ` + arg(limit)
	b.meter.calls(1, 1)
	rows, err := b.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, b.wrap("list runs", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*backend.Run, error) { return scanRun(row) })
	if err != nil {
		return nil, b.wrap("list runs", err)
	}
	return out, nil
}

// WaitRun blocks until run id is no longer running or ctx is done. A notification sent
// by the transaction that finished the run wakes it; it also polls.
func (b *Backend) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	for {
		if err := b.check(); err != nil {
			return nil, err
		}
		ch := b.runs.add(id)
		r, _, err := b.Read(ctx, id)
		if err != nil || r.Status.Final() {
			b.runs.remove(id, ch)
			return r, err
		}
		b.startListener()
		t := time.NewTimer(b.opts.poll)
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-b.ctx.Done():
			err = backend.ErrClosed
		case <-ch:
		case <-t.C:
		}
		t.Stop()
		b.runs.remove(id, ch)
		if err != nil {
			return nil, err
		}
	}
}

var _ backend.Expirer = (*Backend)(nil)

// expireSQL deletes up to $2 final runs last updated before $1 with their state, keeping
// finished children whose parent still runs. Runs locked by a transition in flight are
// skipped, and the status is checked again under the lock, so a rerun that makes a run
// running again in the meantime keeps it.
const expireSQL = `WITH doomed AS (
	SELECT r.id FROM runs r
	WHERE r.status <> 'running' AND r.updated < $1
		AND NOT (r.parent <> '' AND EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent AND p.status = 'running'))
	LIMIT $2
	FOR UPDATE OF r SKIP LOCKED),
kv AS (DELETE FROM run_kv USING doomed WHERE run_kv.run = doomed.id),
gone AS (DELETE FROM runs USING doomed WHERE runs.id = doomed.id RETURNING 1)
SELECT count(*) FROM gone`

// expireChunk is how many runs one ExpireRuns statement deletes.
const expireChunk = 1000

// ExpireRuns deletes every run in a final status last updated before before, with its
// key-value state, and returns how many it deleted. It never deletes a running run, nor
// the finished child of a subflow whose parent still runs. Jobs left for deleted runs
// are dropped by the worker that receives them.
func (b *Backend) ExpireRuns(ctx context.Context, before time.Time) (int, error) {
	if err := b.check(); err != nil {
		return 0, err
	}
	total := 0
	for {
		var n int
		b.meter.calls(1, 1)
		if err := b.pool.QueryRow(ctx, expireSQL, before, expireChunk).Scan(&n); err != nil {
			return total, b.wrap("expire runs", err)
		}
		total += n
		if n < expireChunk {
			return total, nil
		}
	}
}
