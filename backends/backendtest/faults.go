package backendtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// faulty wraps the backend under test to inject, on demand, the faults of a distributed
// system — lost acks and lease renewals, a worker dying between recording a completion
// and enqueueing what follows, a failing store — and to watch deliveries and dead
// letters. Hooks may be changed while workers run.
type faulty struct {
	backend.Backend

	mu sync.Mutex
	// loseAck says whether the ack of a delivered job is lost.
	loseAck func(backend.Job) bool
	// loseExtend says whether the lease renewals of a delivered job are lost.
	loseExtend func(backend.Job) bool
	// drop says whether a job enqueued by a transition (CreateRun or Update), or the
	// next job of a Requeue, is lost, as if its worker died after committing the
	// transition and before sending the job.
	drop func(backend.Job) bool
	// failUpdate, when it returns an error, makes Update of that run fail with it.
	failUpdate func(run string) error
	// failRead, when it returns an error, makes Read of that run fail with it.
	failRead func(run string) error
	// afterList is called when ListRuns has its answer, before it returns it.
	afterList func()

	lostAcks, dropped int
	delivered, acked  []backend.Job // every delivery, every ack passed on
	dead              []deadLetter
}

type deadLetter struct {
	job    backend.Job
	reason string
}

// faulty returns a client on a fresh backend wrapped in a faulty.
func (s *suite) faulty(t *testing.T) (*faulty, *runtime.Client) {
	t.Helper()
	b, _ := s.open(t)
	f := &faulty{Backend: b}
	return f, runtime.New(f)
}

// set changes hooks under the lock.
func (f *faulty) set(change func(f *faulty)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

// stats returns the lost acks and dropped jobs so far.
func (f *faulty) stats() (lostAcks, dropped int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lostAcks, f.dropped
}

// deliveredWhere is how many deliveries were of jobs that match.
func (f *faulty) deliveredWhere(match func(backend.Job) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, j := range f.delivered {
		if match(j) {
			n++
		}
	}
	return n
}

// ackedWhere is how many acks passed on were of jobs that match. A job is acked after
// the transition its handling made committed.
func (f *faulty) ackedWhere(match func(backend.Job) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, j := range f.acked {
		if match(j) {
			n++
		}
	}
	return n
}

// deadLetters returns the jobs dead-lettered so far.
func (f *faulty) deadLetters() []deadLetter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]deadLetter(nil), f.dead...)
}

// Dequeue counts deliveries.
func (f *faulty) Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*backend.Delivery, error) {
	ds, err := f.Backend.Dequeue(ctx, max, lease, wait)
	f.mu.Lock()
	for _, d := range ds {
		f.delivered = append(f.delivered, d.Job)
	}
	f.mu.Unlock()
	return ds, err
}

// Ack loses the acks loseAck selects.
func (f *faulty) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	f.mu.Lock()
	kept := make([]*backend.Delivery, 0, len(ds))
	for _, d := range ds {
		if f.loseAck != nil && f.loseAck(d.Job) {
			f.lostAcks++
			continue
		}
		kept = append(kept, d)
		f.acked = append(f.acked, d.Job)
	}
	f.mu.Unlock()
	if len(kept) == 0 {
		return nil
	}
	return f.Backend.Ack(ctx, kept...)
}

// Extend loses the lease renewals loseExtend selects.
func (f *faulty) Extend(ctx context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	f.mu.Lock()
	kept := make([]*backend.Delivery, 0, len(ds))
	for _, d := range ds {
		if f.loseExtend == nil || !f.loseExtend(d.Job) {
			kept = append(kept, d)
		}
	}
	f.mu.Unlock()
	if len(kept) == 0 {
		return nil
	}
	return f.Backend.Extend(ctx, lease, kept...)
}

// Requeue acks instead when drop selects the next job: the job is lost.
func (f *faulty) Requeue(ctx context.Context, d *backend.Delivery, next backend.Job) error {
	f.mu.Lock()
	lose := f.drop != nil && f.drop(next)
	if lose {
		f.dropped++
		f.acked = append(f.acked, d.Job)
	}
	f.mu.Unlock()
	if lose {
		return f.Backend.Ack(ctx, d)
	}
	return f.Backend.Requeue(ctx, d, next)
}

// DeadLetter records dead letters.
func (f *faulty) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	f.mu.Lock()
	f.dead = append(f.dead, deadLetter{job: d.Job, reason: reason})
	f.mu.Unlock()
	return f.Backend.DeadLetter(ctx, d, reason)
}

// CreateRun drops the jobs drop selects.
func (f *faulty) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	return f.Backend.CreateRun(ctx, r, func(tx backend.Tx) error { return init(dropTx{tx, f}) })
}

// Update fails as failUpdate says, and drops the jobs drop selects.
func (f *faulty) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	f.mu.Lock()
	fail := f.failUpdate
	f.mu.Unlock()
	if fail != nil {
		if err := fail(id); err != nil {
			return err
		}
	}
	return f.Backend.Update(ctx, id, func(tx backend.Tx) error { return fn(dropTx{tx, f}) })
}

// Read fails as failRead says.
func (f *faulty) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	f.mu.Lock()
	fail := f.failRead
	f.mu.Unlock()
	if fail != nil {
		if err := fail(id); err != nil {
			return nil, nil, err
		}
	}
	return f.Backend.Read(ctx, id, keys...)
}

// ListRuns calls afterList before it returns.
func (f *faulty) ListRuns(ctx context.Context, filter backend.RunFilter) ([]*backend.Run, error) {
	rs, err := f.Backend.ListRuns(ctx, filter)
	f.mu.Lock()
	after := f.afterList
	f.mu.Unlock()
	if after != nil {
		after()
	}
	return rs, err
}

// WaitRun waits through the backend when it can, and polls otherwise.
func (f *faulty) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	if w, ok := f.Backend.(backend.Waiter); ok {
		return w.WaitRun(ctx, id)
	}
	for {
		r, _, err := f.Read(ctx, id)
		if err != nil || r.Status.Final() {
			return r, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// isNode selects the jobs of node instance inst.
func isNode(inst string) func(backend.Job) bool {
	return func(j backend.Job) bool { return j.Node == inst }
}

// dropTx is a transition whose enqueues pass through the faulty's drop hook.
type dropTx struct {
	backend.Tx
	f *faulty
}

func (t dropTx) Enqueue(jobs ...backend.Job) {
	t.f.mu.Lock()
	kept := make([]backend.Job, 0, len(jobs))
	for _, j := range jobs {
		if t.f.drop != nil && t.f.drop(j) {
			t.f.dropped++
			continue
		}
		kept = append(kept, j)
	}
	t.f.mu.Unlock()
	t.Tx.Enqueue(kept...)
}
