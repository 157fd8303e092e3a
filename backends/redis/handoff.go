package redis

import (
	"context"
	"sync"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// handoff passes jobs from this process's commits straight to its Dequeue calls. A
// commit that makes jobs ready while a Dequeue call of this process wants jobs (it
// waits, or asks Redis) leases them in the same script call (see lease in
// scripts/lib.lua), so the next node of a run starts without another round trip and
// without a pub/sub wake-up. Only as many jobs as the Dequeue calls asked for are
// leased this way; what a call did not take waits for the next, its lease renewed
// meanwhile (keepHandoff), and Close puts back what is left.
type handoff struct {
	mu       sync.Mutex
	demand   int           // jobs the waiting Dequeue calls want
	reserved int           // jobs commits in flight lease for them
	lease    time.Duration // the lease the last Dequeue asked for
	ready    []*backend.Delivery
	readyAt  time.Time     // when the oldest of ready was leased
	signal   chan struct{} // closed and replaced when ready gets jobs
}

// take returns up to max jobs leased for this process.
func (h *handoff) take(max int) []*backend.Delivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(max, len(h.ready))
	if n == 0 {
		return nil
	}
	out := append([]*backend.Delivery(nil), h.ready[:n]...)
	h.ready = h.ready[n:]
	if len(h.ready) == 0 {
		h.ready = nil
	}
	return out
}

// wait registers a Dequeue waiting for max jobs with the given lease, and returns the
// channel closed when jobs are handed over: closed already when some were handed over
// since the caller last looked.
func (h *handoff) wait(max int, lease time.Duration) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.demand += max
	h.lease = lease
	if len(h.ready) > 0 {
		return closedChan
	}
	return h.signal
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// unwait ends a wait registered with max.
func (h *handoff) unwait(max int) {
	h.mu.Lock()
	h.demand -= max
	h.mu.Unlock()
}

// reserve promises up to n jobs to the waiting Dequeue calls and returns how many,
// and the lease to give them.
func (h *handoff) reserve(n int) (int, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := max(0, min(n, h.demand-h.reserved-len(h.ready)))
	h.reserved += k
	return k, h.lease
}

// deliver hands over the jobs a commit leased for k reserved.
func (h *handoff) deliver(k int, ds []*backend.Delivery) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reserved -= k
	if len(ds) > 0 {
		if len(h.ready) == 0 {
			h.readyAt = time.Now()
		}
		h.ready = append(h.ready, ds...)
		close(h.signal)
		h.signal = make(chan struct{})
	}
}

// stale returns the jobs handed over and not taken for longer than d (all of them),
// with their lease, and counts them as renewed.
func (h *handoff) stale(d time.Duration) ([]*backend.Delivery, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ready) == 0 || time.Since(h.readyAt) < d {
		return nil, 0
	}
	h.readyAt = time.Now()
	return append([]*backend.Delivery(nil), h.ready...), h.lease
}

// keepHandoff renews the leases of jobs handed over that wait for a Dequeue (when all
// of the worker's executors are busy): the worker's heartbeat only knows jobs it runs.
func (b *Backend) keepHandoff() {
	b.handoff.mu.Lock()
	lease := b.handoff.lease
	b.handoff.mu.Unlock()
	ds, lease := b.handoff.stale(lease / 3)
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = b.Extend(ctx, lease, ds...)
}

// releaseHandoff puts back the jobs leased for this process that no Dequeue took.
func (b *Backend) releaseHandoff() {
	ds := b.handoff.take(1 << 30)
	if len(ds) == 0 {
		return
	}
	args := make([]any, len(ds))
	for i, d := range ds {
		args[i] = d.Handle.(lease).member
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = b.pipe.eval(ctx, releaseScript, []string{b.k.ready, b.k.leased}, args)
}
