// Package mem is the in-process backend, registered as "mem://": a priority queue with
// leases and delayed jobs, and run state in maps guarded by a mutex per run. It is fast
// and not durable: for tests, benchmarks and single-process use.
package mem

import (
	"container/heap"
	"context"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

func init() {
	backend.Register("mem", func(context.Context, *url.URL) (backend.Backend, error) { return New(), nil })
}

// Backend is the in-process backend. The zero value is not usable; call New.
type Backend struct {
	mu      sync.Mutex
	closed  bool
	seq     uint64
	ready   readyHeap
	delayed delayedHeap
	leased  map[uint64]*entry
	// nextExpiry is the earliest lease deadline in leased (zero when none).
	nextExpiry time.Time
	dead       []DeadJob
	wake       chan struct{} // closed and replaced when jobs become ready

	runsMu sync.Mutex
	runs   map[string]*runState

	maxValue int // 0: no limit
}

// Option configures New.
type Option func(*Backend)

// WithMaxValueSize makes the backend refuse, with an error wrapping backend.ErrTooLarge,
// any value, run input or run result larger than n bytes, as backends with an item size
// limit do (default: no limit). Tests use it to check how such limits are handled.
func WithMaxValueSize(n int) Option { return func(b *Backend) { b.maxValue = n } }

// DeadJob is a job moved aside by DeadLetter.
type DeadJob struct {
	Job    backend.Job
	Reason string
}

type entry struct {
	job        backend.Job
	seq        uint64
	deliveries int
	deadline   time.Time
}

type runState struct {
	mu  sync.Mutex
	rec backend.Run
	kv  map[string][]byte
	// done is closed when the run reaches a final status, and replaced when a rerun
	// makes it running again. Guarded by mu.
	done chan struct{}
	// gone is set when the run was deleted (or its creation failed) while others may
	// still hold it. Guarded by mu.
	gone bool
}

// New returns an empty in-process backend.
func New(opts ...Option) *Backend {
	b := &Backend{
		leased: map[uint64]*entry{},
		runs:   map[string]*runState{},
		wake:   make(chan struct{}),
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Close stops the backend; blocked Dequeue calls return.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.wake)
	}
	return nil
}

// Enqueue adds jobs to the queue.
func (b *Backend) Enqueue(_ context.Context, jobs ...backend.Job) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return backend.ErrClosed
	}
	b.push(time.Now(), jobs...)
	return nil
}

// push adds jobs; b.mu is held.
func (b *Backend) push(now time.Time, jobs ...backend.Job) {
	woke := false
	for _, j := range jobs {
		b.seq++
		e := &entry{job: j, seq: b.seq}
		if j.NotBefore.After(now) {
			heap.Push(&b.delayed, e)
		} else {
			heap.Push(&b.ready, e)
			woke = true
		}
	}
	if woke {
		b.broadcast()
	}
}

func (b *Backend) broadcast() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// Dequeue leases up to max ready jobs, waiting up to wait for one.
func (b *Backend) Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*backend.Delivery, error) {
	deadline := time.Now().Add(wait)
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, backend.ErrClosed
		}
		now := time.Now()
		b.promote(now)
		var out []*backend.Delivery
		for len(out) < max && b.ready.Len() > 0 {
			e := heap.Pop(&b.ready).(*entry)
			e.deliveries++
			e.deadline = now.Add(lease)
			b.leased[e.seq] = e
			if b.nextExpiry.IsZero() || e.deadline.Before(b.nextExpiry) {
				b.nextExpiry = e.deadline
			}
			out = append(out, &backend.Delivery{Job: e.job, Deliveries: e.deliveries, Handle: leaseHandle{e.seq, e.deliveries}})
		}
		if len(out) > 0 || !now.Before(deadline) {
			b.mu.Unlock()
			return out, nil
		}
		// Sleep until something is pushed, a delayed job or a lease falls due, or the wait ends.
		until := deadline
		if b.delayed.Len() > 0 && b.delayed[0].job.NotBefore.Before(until) {
			until = b.delayed[0].job.NotBefore
		}
		if !b.nextExpiry.IsZero() && b.nextExpiry.Before(until) {
			until = b.nextExpiry
		}
		wake := b.wake
		b.mu.Unlock()
		t := time.NewTimer(time.Until(until))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// promote moves due delayed jobs and expired leases to the ready heap; b.mu is held.
func (b *Backend) promote(now time.Time) {
	for b.delayed.Len() > 0 && !b.delayed[0].job.NotBefore.After(now) {
		heap.Push(&b.ready, heap.Pop(&b.delayed))
	}
	if b.nextExpiry.IsZero() || now.Before(b.nextExpiry) {
		return
	}
	b.nextExpiry = time.Time{}
	for seq, e := range b.leased {
		if !e.deadline.After(now) {
			delete(b.leased, seq)
			heap.Push(&b.ready, e)
		} else if b.nextExpiry.IsZero() || e.deadline.Before(b.nextExpiry) {
			b.nextExpiry = e.deadline
		}
	}
}

// leaseHandle is a Delivery's handle: the job and which of its deliveries. A delivery whose
// lease expired keeps a stale handle that no longer matches once the job is delivered
// again, so its holder cannot ack, requeue or extend the new holder's lease.
type leaseHandle struct {
	seq        uint64
	deliveries int
}

// leasedBy returns the entry d still holds the lease of; b.mu is held.
func (b *Backend) leasedBy(d *backend.Delivery) (*entry, bool) {
	l, _ := d.Handle.(leaseHandle)
	e, ok := b.leased[l.seq]
	if !ok || e.deliveries != l.deliveries {
		return nil, false
	}
	return e, true
}

// take removes a leased job; it reports false when the lease was lost. b.mu is held.
func (b *Backend) take(d *backend.Delivery) bool {
	e, ok := b.leasedBy(d)
	if ok {
		delete(b.leased, e.seq)
	}
	return ok
}

// Ack removes delivered jobs.
func (b *Backend) Ack(_ context.Context, ds ...*backend.Delivery) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range ds {
		b.take(d)
	}
	return nil
}

// Requeue replaces a delivered job with next.
func (b *Backend) Requeue(_ context.Context, d *backend.Delivery, next backend.Job) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.take(d) {
		b.push(time.Now(), next)
	}
	return nil
}

// Extend renews leases.
func (b *Backend) Extend(_ context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	deadline := time.Now().Add(lease)
	for _, d := range ds {
		if e, ok := b.leasedBy(d); ok {
			e.deadline = deadline
		}
	}
	return nil
}

// DeadLetter moves a delivered job aside.
func (b *Backend) DeadLetter(_ context.Context, d *backend.Delivery, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.take(d) {
		b.dead = append(b.dead, DeadJob{Job: d.Job, Reason: reason})
	}
	return nil
}

// Pending returns how many jobs are queued, delayed or leased.
func (b *Backend) Pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready.Len() + b.delayed.Len() + len(b.leased)
}

// DeadLetters returns the jobs moved aside so far.
func (b *Backend) DeadLetters() []DeadJob {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]DeadJob(nil), b.dead...)
}

// CreateRun creates a run unless one with its id exists.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	b.runsMu.Lock()
	if _, dup := b.runs[r.ID]; dup {
		b.runsMu.Unlock()
		return false, nil
	}
	rs := &runState{rec: *r, kv: make(map[string][]byte, 16), done: make(chan struct{})}
	rs.mu.Lock()
	b.runs[r.ID] = rs
	b.runsMu.Unlock()
	if err := b.apply(rs, init); err != nil {
		// Never take runsMu while holding a run's lock: ExpireRuns locks in the
		// other order. Whoever finds the run before it is removed sees it gone.
		rs.gone = true
		rs.mu.Unlock()
		b.runsMu.Lock()
		delete(b.runs, r.ID)
		b.runsMu.Unlock()
		return false, err
	}
	rs.mu.Unlock()
	return true, nil
}

func (b *Backend) run(id string) (*runState, error) {
	b.runsMu.Lock()
	rs, ok := b.runs[id]
	b.runsMu.Unlock()
	if !ok {
		return nil, backend.ErrNotFound
	}
	return rs, nil
}

// Update runs fn as one atomic transition of run id.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	rs, err := b.run(id)
	if err != nil {
		return err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.gone {
		return backend.ErrNotFound
	}
	return b.apply(rs, fn)
}

// apply runs fn on a buffered transaction and commits it; rs.mu is held.
func (b *Backend) apply(rs *runState, fn func(backend.Tx) error) error {
	t := &tx{rs: rs, rec: rs.rec, max: b.maxValue}
	err := fn(t)
	if err == nil && t.max > 0 {
		err = t.check("run result", t.rec.Result)
		if err == nil {
			err = t.check("run input", t.rec.Input)
		}
	}
	if err != nil {
		t.rollback()
		return err
	}
	wasFinal := rs.rec.Status.Final()
	t.rec.Updated = time.Now()
	rs.rec = t.rec
	switch isFinal := rs.rec.Status.Final(); {
	case !wasFinal && isFinal:
		close(rs.done)
	case wasFinal && !isFinal: // a rerun
		rs.done = make(chan struct{})
	}
	if len(t.jobs) > 0 {
		b.mu.Lock()
		b.push(time.Now(), t.jobs...)
		b.mu.Unlock()
	}
	return nil
}

// Read returns the run and the values of keys.
func (b *Backend) Read(_ context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	rs, err := b.run(id)
	if err != nil {
		return nil, nil, err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.gone {
		return nil, nil, backend.ErrNotFound
	}
	rec := rs.rec
	vals := make(map[string][]byte, len(keys))
	for _, k := range keys {
		if v, ok := rs.kv[k]; ok {
			vals[k] = v
		}
	}
	return &rec, vals, nil
}

// WaitRun blocks until the run is final.
func (b *Backend) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	rs, err := b.run(id)
	if err != nil {
		return nil, err
	}
	for {
		rs.mu.Lock()
		rec, done, gone := rs.rec, rs.done, rs.gone
		rs.mu.Unlock()
		if gone {
			return nil, backend.ErrNotFound
		}
		if rec.Status.Final() {
			return &rec, nil
		}
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ListRuns lists runs matching f, newest first.
func (b *Backend) ListRuns(_ context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	b.runsMu.Lock()
	all := make([]*runState, 0, len(b.runs))
	for _, rs := range b.runs {
		all = append(all, rs)
	}
	b.runsMu.Unlock()
	var out []*backend.Run
	for _, rs := range all {
		rs.mu.Lock()
		rec, gone := rs.rec, rs.gone
		rs.mu.Unlock()
		if !gone && (f.Status == "" || rec.Status == f.Status) && (f.Workflow == "" || rec.Workflow == f.Workflow) &&
			(f.UpdatedBefore.IsZero() || rec.Updated.Before(f.UpdatedBefore)) {
			out = append(out, &rec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID > out[j].ID
	})
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// ExpireRuns deletes the final runs last updated before before, keeping finished
// children whose parent still runs.
func (b *Backend) ExpireRuns(_ context.Context, before time.Time) (int, error) {
	b.runsMu.Lock()
	defer b.runsMu.Unlock()
	// Lock order: runsMu, then one run's lock at a time.
	status := func(rs *runState) (backend.Status, time.Time, string) {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.rec.Status, rs.rec.Updated, rs.rec.Parent
	}
	var expired []*runState
	for _, rs := range b.runs {
		s, updated, parent := status(rs)
		if !s.Final() || !updated.Before(before) {
			continue
		}
		if p, ok := b.runs[parent]; ok && parent != "" {
			if ps, _, _ := status(p); !ps.Final() {
				continue
			}
		}
		expired = append(expired, rs)
	}
	n := 0
	for _, rs := range expired {
		rs.mu.Lock()
		if rs.rec.Status.Final() && rs.rec.Updated.Before(before) { // no rerun since
			rs.gone = true
			delete(b.runs, rs.rec.ID)
			n++
		}
		rs.mu.Unlock()
	}
	return n, nil
}

// tx writes through to the run's map and keeps an undo log, so a transition that
// fails is rolled back and one that succeeds costs no copy.
type tx struct {
	rs   *runState
	rec  backend.Run
	undo []undo
	jobs []backend.Job
	max  int // largest value stored; 0: no limit
}

// check refuses a value over the size limit.
func (t *tx) check(what string, v []byte) error {
	if t.max > 0 && len(v) > t.max {
		return fmt.Errorf("%s of %d bytes exceeds the limit of %d: %w", what, len(v), t.max, backend.ErrTooLarge)
	}
	return nil
}

// undo is a key's value before the transaction changed it.
type undo struct {
	key string
	old []byte
	had bool
}

func (t *tx) Run() *backend.Run { return &t.rec }

// set stores v under k (nil deletes), remembering the old value.
func (t *tx) set(k string, v []byte) {
	old, had := t.rs.kv[k]
	t.undo = append(t.undo, undo{key: k, old: old, had: had})
	if v == nil {
		delete(t.rs.kv, k)
	} else {
		t.rs.kv[k] = v
	}
}

func (t *tx) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		u := t.undo[i]
		if u.had {
			t.rs.kv[u.key] = u.old
		} else {
			delete(t.rs.kv, u.key)
		}
	}
}

func (t *tx) Get(keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = t.rs.kv[k]
	}
	return out, nil
}

func (t *tx) PutIfAbsent(key string, val []byte) (bool, error) {
	if _, ok := t.rs.kv[key]; ok {
		return false, nil
	}
	if err := t.check("value of "+key, val); err != nil {
		return false, err
	}
	t.set(key, nonNil(val))
	return true, nil
}

func (t *tx) Put(key string, val []byte) error {
	if err := t.check("value of "+key, val); err != nil {
		return err
	}
	t.set(key, nonNil(val))
	return nil
}

func (t *tx) Delete(keys ...string) error {
	for _, k := range keys {
		t.set(k, nil)
	}
	return nil
}

func (t *tx) Incr(key string, delta int64) (int64, error) {
	var n int64
	if v := t.rs.kv[key]; v != nil {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, err
		}
	}
	if delta != 0 {
		n += delta
		t.set(key, strconv.AppendInt(nil, n, 10))
	}
	return n, nil
}

func (t *tx) Enqueue(jobs ...backend.Job) { t.jobs = append(t.jobs, jobs...) }

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// readyHeap orders jobs by priority (higher first), then by arrival.
type readyHeap []*entry

func (h readyHeap) Len() int { return len(h) }
func (h readyHeap) Less(i, j int) bool {
	if h[i].job.Priority != h[j].job.Priority {
		return h[i].job.Priority > h[j].job.Priority
	}
	return h[i].seq < h[j].seq
}
func (h readyHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *readyHeap) Push(x any)   { *h = append(*h, x.(*entry)) }
func (h *readyHeap) Pop() any     { return pop((*[]*entry)(h)) }

// delayedHeap orders jobs by the time they become visible.
type delayedHeap []*entry

func (h delayedHeap) Len() int           { return len(h) }
func (h delayedHeap) Less(i, j int) bool { return h[i].job.NotBefore.Before(h[j].job.NotBefore) }
func (h delayedHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayedHeap) Push(x any)        { *h = append(*h, x.(*entry)) }
func (h *delayedHeap) Pop() any          { return pop((*[]*entry)(h)) }

func pop(h *[]*entry) any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
