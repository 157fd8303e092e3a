package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// tx is a transition (backend.Tx) on top of the Redis backend's: it stores large values
// in the contexts container by reference and holds back the jobs until the commit.
type tx struct {
	b       *Backend
	ctx     context.Context
	in      backend.Tx
	run     string
	created int64
	pending map[string]pendingValue // items to write before the commit, by id
	jobs    []backend.Job
}

// Run is the run's record; changes to it are saved with the transition.
func (t *tx) Run() *backend.Run { return t.in.Run() }

// Get returns the values of keys; absent keys are nil. References are resolved.
func (t *tx) Get(keys ...string) ([][]byte, error) {
	vals, err := t.in.Get(keys...)
	if err != nil {
		return nil, err
	}
	if err := t.b.resolve(t.ctx, t.run, vals, t.pending); err != nil {
		return nil, err
	}
	return vals, nil
}

// stored is what Redis is to hold for val: val itself, or a reference to the item
// that will hold it.
func (t *tx) stored(key string, val []byte) ([]byte, string, error) {
	if len(val) > MaxValueSize {
		return nil, "", tooLarge(t.run, fmt.Sprintf("the value of %q", key), len(val))
	}
	if !t.b.byRef(val) {
		return val, "", nil
	}
	id := docID(t.run, t.created, key, val)
	return refOf(id), id, nil
}

func (t *tx) hold(id, key string, val []byte) {
	if id == "" {
		return
	}
	if t.pending == nil {
		t.pending = map[string]pendingValue{}
	}
	t.pending[id] = pendingValue{key: key, v: append([]byte{}, val...)}
}

// PutIfAbsent stores key=val unless key exists.
func (t *tx) PutIfAbsent(key string, val []byte) (bool, error) {
	s, id, err := t.stored(key, val)
	if err != nil {
		return false, err
	}
	ok, err := t.in.PutIfAbsent(key, s)
	if ok && err == nil {
		t.hold(id, key, val)
	}
	return ok, err
}

// Put stores key=val.
func (t *tx) Put(key string, val []byte) error {
	s, id, err := t.stored(key, val)
	if err != nil {
		return err
	}
	if err := t.in.Put(key, s); err != nil {
		return err
	}
	t.hold(id, key, val)
	return nil
}

// Delete removes keys. The items of their values stay until the run expires.
func (t *tx) Delete(keys ...string) error { return t.in.Delete(keys...) }

// Incr adds delta to the integer at key.
func (t *tx) Incr(key string, delta int64) (int64, error) { return t.in.Incr(key, delta) }

// Enqueue adds jobs, sent to the queue once the transition committed.
func (t *tx) Enqueue(jobs ...backend.Job) { t.jobs = append(t.jobs, jobs...) }

// outcome is what the last run of a transition's fn left: its jobs, and whether it
// changed what the status item mirrors.
type outcome struct {
	jobs    []backend.Job
	changed bool
	created time.Time
}

// wrap returns the fn that the Redis backend runs: fn on a tx of this backend, then
// the writes of its large values to Cosmos DB, before Redis commits. The Redis backend
// may run it several times; each run starts afresh.
func (b *Backend) wrap(ctx context.Context, run string, fn func(backend.Tx) error, out *outcome) func(backend.Tx) error {
	return func(in backend.Tx) error {
		*out = outcome{}
		r := in.Run()
		before := mirrored(r)
		t := &tx{b: b, ctx: ctx, in: in, run: run, created: r.Created.UnixMicro()}
		if err := fn(t); err != nil {
			return err
		}
		if len(r.Result) > MaxValueSize {
			return tooLarge(run, "the result", len(r.Result))
		}
		if err := b.writeValues(ctx, run, t.pending); err != nil {
			return err
		}
		out.jobs = t.jobs
		out.changed = mirrored(r) != before
		out.created = r.Created
		return nil
	}
}

// mirrored is what a transition may change of the fields the status item mirrors.
func mirrored(r *backend.Run) string {
	return string(r.Status) + "\x00" + r.FailedNode + "\x00" + r.Reason + "\x00" + string(r.Result)
}

// CreateRun creates r and runs init in the same transition (backend.Store). The status
// item is written first, so that no run exists without one; an item left by a create
// that failed refers to no run, and ListRuns leaves it out.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	if err := b.check(); err != nil {
		return false, err
	}
	if r.ID == "" {
		return false, errors.New("azure: create run: empty run id")
	}
	if len(r.Input) > MaxValueSize {
		return false, tooLarge(r.ID, "the input", len(r.Input))
	}
	docNew, err := b.createStatus(ctx, r)
	if err != nil {
		return false, err
	}
	var out outcome
	created, err := b.rdb.CreateRun(ctx, r, b.wrap(ctx, r.ID, init, &out))
	if err != nil {
		return false, err
	}
	ctx, cancel := afterCommit(ctx)
	defer cancel()
	if !created {
		if docNew {
			// The run exists, without a status item: mirror it.
			_ = b.syncStatus(ctx, r.ID, true)
		}
		return false, nil
	}
	if !docNew || out.changed {
		// An item of an expired run of the same id, or init changed the status.
		if err := b.syncStatus(ctx, r.ID, true); err != nil {
			return true, err
		}
	}
	return true, b.sendAfterCommit(ctx, r.ID, out.jobs)
}

// sendAfterCommit sends a committed transition's jobs. Should it fail, the reconciler
// sends them again.
func (b *Backend) sendAfterCommit(ctx context.Context, run string, jobs []backend.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	if err := b.Enqueue(ctx, jobs...); err != nil {
		return fmt.Errorf("azure: run %s: transition committed, but its jobs were not sent (the reconciler will send them again): %w", run, err)
	}
	return nil
}

// Update runs fn as one atomic transition of run id (backend.Store): the Redis
// backend's optimistic transaction, with large values written to Cosmos DB before it
// commits and the jobs sent after. When the transition changed the status or result,
// or the status item's lastUpdated is older than touch, the status item is brought up
// to date.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	if err := b.check(); err != nil {
		return err
	}
	start := time.Now()
	var out outcome
	if err := b.rdb.Update(ctx, id, b.wrap(ctx, id, fn, &out)); err != nil {
		return err
	}
	// Committed: what follows completes it even if the caller gives up meanwhile.
	ctx, cancel := afterCommit(ctx)
	defer cancel()
	st := b.state(id)
	if out.changed || st.due(start, out.created, b.opts.Touch) {
		if err := b.syncStatus(ctx, id, out.changed); err != nil {
			slog.Warn("azure: status item not updated (ListRuns repairs it)", "run", id, "err", err)
		}
	}
	return b.sendAfterCommit(ctx, id, out.jobs)
}

// afterCommit is the context of the work that follows a commit (the status item, the
// jobs): not cancelled with the caller's, bounded on its own.
func afterCommit(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

// Read returns the run and the values of keys from Redis, with the values stored by
// reference read from Cosmos DB.
func (b *Backend) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	if err := b.check(); err != nil {
		return nil, nil, err
	}
	r, m, err := b.rdb.Read(ctx, id, keys...)
	if err != nil {
		return nil, nil, err
	}
	ks := make([]string, 0, len(m))
	vals := make([][]byte, 0, len(m))
	for k, v := range m {
		if _, ok := refID(v); ok {
			ks = append(ks, k)
			vals = append(vals, v)
		}
	}
	if len(ks) > 0 {
		if err := b.resolve(ctx, id, vals, nil); err != nil {
			return nil, nil, err
		}
		for i, k := range ks {
			m[k] = vals[i]
		}
	}
	return r, m, nil
}

// WaitRun blocks until run id is no longer running or ctx is done (backend.Waiter),
// through the Redis backend's notifications.
func (b *Backend) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	return b.rdb.WaitRun(ctx, id)
}

// sortRuns orders runs newest first.
func sortRuns(rs []*backend.Run) {
	slices.SortFunc(rs, func(a, c *backend.Run) int {
		if n := c.Created.Compare(a.Created); n != 0 {
			return n
		}
		switch {
		case a.ID < c.ID:
			return 1
		case a.ID > c.ID:
			return -1
		}
		return 0
	})
}
