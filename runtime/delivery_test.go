package runtime_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/backends/mem"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Tests of exactly-once effects on at-least-once delivery: idempotent starts, reruns,
// jobs for other versions, duplicated jobs, lost acks and expired leases.

func TestWithRunIDStartsOnce(t *testing.T) {
	t.Parallel()
	f := newFlow("idempotent").
		node("a", fromRun(add(1))).
		node("b", from("a", add(1))).
		edge("a", "b")
	wf := f.build()
	c := setup(t, wf)
	ctx := ctxT(t)

	for range 3 {
		id, err := runtime.Start(ctx, c, wf, 1, runtime.WithRunID("order-42"))
		if err != nil || id != "order-42" {
			t.Fatalf("Start = %q, %v; want order-42", id, err)
		}
	}
	res, err := runtime.Await(ctx, c, "order-42")
	if err != nil || string(res) != "3" {
		t.Fatalf("Await = %s, %v; want 3", res, err)
	}
	// Starting it again after it completed changes nothing either.
	if _, err := runtime.Start(ctx, c, wf, 100, runtime.WithRunID("order-42")); err != nil {
		t.Fatal(err)
	}
	res, err = runtime.Await(ctx, c, "order-42")
	if err != nil || string(res) != "3" {
		t.Fatalf("Await after a second start = %s, %v; want 3", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1})
}

func TestRerunFrom(t *testing.T) {
	t.Parallel()
	// a -> b -> join, a -> d -> join. Rerunning from b re-runs b and join only; b
	// answers differently the second time.
	var bRuns atomic.Int64
	f := newFlow("rerun").
		node("a", fromRun(add(1))).
		node("b", from("a", func(_ context.Context, in int) (int, error) {
			return in * int(10*bRuns.Add(1)), nil
		})).
		node("d", from("a", add(1000))).
		node("join", joinStruct(sum, "b", "d")).
		edge("a", "b").edge("a", "d").edge("b", "join").edge("d", "join")
	wf := f.build()
	c := setup(t, wf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "1022" { // b = 2*10, d = 1002
		t.Fatalf("first result = %s, %v; want 20+1002", res, err)
	}
	if err := c.RerunFrom(ctx, id, "b"); err != nil {
		t.Fatal(err)
	}
	res, err = runtime.Await(ctx, c, id)
	if err != nil || string(res) != "1042" { // b = 2*20, d kept
		t.Fatalf("result after rerun = %s, %v; want 40+1002", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "d": 1, "b": 2, "join": 2})

	if err := c.RerunFrom(ctx, id, "no-such-node"); err != nil {
		t.Fatal(err)
	}
	_, err = runtime.Await(ctx, c, id)
	wantRunError(t, err, "no-such-node", "no node")
}

func TestRerunFailedRun(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	f := newFlow("rerun-failed").
		node("a", fromRun(add(1))).
		node("b", from("a", func(_ context.Context, in int) (int, error) {
			if !healthy.Load() {
				return 0, errors.New("down")
			}
			return in * 2, nil
		})).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	c := setup(t, wf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runtime.Await(ctx, c, id)
	wantRunError(t, err, "b", "down")
	healthy.Store(true)
	if err := c.RerunFrom(ctx, id, "b"); err != nil {
		t.Fatal(err)
	}
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "5" {
		t.Fatalf("result after rerun = %s, %v; want (1+1)*2+1", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 2, "c": 1})
}

func TestRerunSubflow(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	child := newFlow("rerun-child").
		node("c1", fromRun(func(_ context.Context, in int) (int, error) {
			return in + int(calls.Add(1)), nil
		}))
	parent := newFlow("rerun-parent").
		node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "rerun-child" }).
		node("after", from("sub", mul(10))).
		edge("sub", "after")
	cwf, pwf := child.build(), parent.build()
	c := setup(t, cwf, pwf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, pwf, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := runtime.Await(ctx, c, id); err != nil || string(res) != "20" {
		t.Fatalf("first result = %s, %v; want (1+1)*10", res, err)
	}
	if err := c.RerunFrom(ctx, id, "sub"); err != nil {
		t.Fatal(err)
	}
	// A rerun starts a new child run, which answers differently.
	if res, err := runtime.Await(ctx, c, id); err != nil || string(res) != "30" {
		t.Fatalf("result after rerun = %s, %v; want (1+2)*10", res, err)
	}
	wantCounts(t, child, map[string]int{"c1": 2})
	wantCounts(t, parent, map[string]int{"after": 2})
}

func TestRerunWhileRunning(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	f := newFlow("rerun-running").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			<-release
			return fromRun(add(1))(ctx, t)
		})
	wf := f.build()
	c := setup(t, wf)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RerunFrom(ctx, id, "a"); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("RerunFrom on a running run = %v, want an error", err)
	}
	close(release)
	if _, err := runtime.Await(ctx, c, id); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, map[string]int{"a": 1})
}

// logRecorder is a slog handler that remembers messages.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func TestUnknownVersionIsReturnedToTheQueue(t *testing.T) {
	t.Parallel()
	v1 := newFlow("versioned").node("a", fromRun(add(1)))
	v1.wf.Version = "v1"
	v2 := newFlow("versioned").node("a", fromRun(add(2)))
	v2.wf.Version = "v2"
	wf1, wf2 := v1.build(), v2.build()
	c := newClient(t)
	logs := &logRecorder{}
	stopV1 := startWorker(t, c, []*runtime.Workflow{wf1}, runtime.WithLogger(slog.New(logs)))
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf2, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the v1 worker to return the v2 job", func() bool {
		return logs.count("does not have") > 0
	})
	if info, err := c.Status(ctx, id); err != nil || info.Status != "running" {
		t.Fatalf("status = %+v, %v; want running", info, err)
	}
	stopV1()
	startWorker(t, c, []*runtime.Workflow{wf2})
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "3" {
		t.Fatalf("Await = %s, %v; want 3 from the v2 worker", res, err)
	}
	wantCounts(t, v1, map[string]int{"a": 0})
	wantCounts(t, v2, map[string]int{"a": 1})
	if dl := c.Backend().(*mem.Backend).DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %v", dl)
	}
}

// blockingFlow is a -> b -> c where b signals started and waits for release.
func blockingFlow(id string, started chan<- struct{}, release <-chan struct{}) *flow {
	return newFlow(id).
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			started <- struct{}{}
			<-release
			return from("a", mul(2))(ctx, t)
		}).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
}

func TestDuplicateJob(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	f := blockingFlow("duplicate", started, release)
	wf := f.build()
	c := setup(t, wf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	// Deliver b again while it runs, and a again after it completed.
	dup := func(node string) backend.Job {
		return backend.Job{ID: "dup-" + node, Run: string(id), Workflow: wf.ID, Kind: backend.Exec, Node: node, Attempt: 1}
	}
	if err := c.Backend().Enqueue(ctx, dup("b"), dup("a")); err != nil {
		t.Fatal(err)
	}
	<-started // the copy of b runs too: delivery is at least once
	close(release)
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "5" {
		t.Fatalf("Await = %s, %v; want (1+1)*2+1", res, err)
	}
	time.Sleep(20 * time.Millisecond) // let any stray successor show up
	wantCounts(t, f, map[string]int{"a": 1, "b": 2, "c": 1})
}

// faultyBackend wraps the mem backend to lose acks and lease renewals on demand.
type faultyBackend struct {
	*mem.Backend
	loseAck    func(backend.Job) bool
	loseExtend atomic.Bool
	lost       atomic.Int32
}

func (b *faultyBackend) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	kept := ds[:0:0]
	for _, d := range ds {
		if b.loseAck != nil && b.loseAck(d.Job) {
			b.lost.Add(1)
			continue
		}
		kept = append(kept, d)
	}
	return b.Backend.Ack(ctx, kept...)
}

func (b *faultyBackend) Extend(ctx context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	if b.loseExtend.Load() {
		return nil
	}
	return b.Backend.Extend(ctx, lease, ds...)
}

func TestLostAck(t *testing.T) {
	t.Parallel()
	var once atomic.Bool
	fb := &faultyBackend{Backend: mem.New()}
	fb.loseAck = func(j backend.Job) bool { return j.Node == "b" && once.CompareAndSwap(false, true) }
	c := runtime.New(fb)
	t.Cleanup(func() { c.Close() })
	f := newFlow("lost-ack").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(100*time.Millisecond))

	if got := runInt(t, c, wf, 1); got != 5 {
		t.Errorf("result = %d, want 5", got)
	}
	// b's job comes back when its lease expires; the worker finds b complete and acks
	// it without running b again.
	eventually(t, "b's job to be redelivered and acked", func() bool {
		return fb.Backend.Pending() == 0
	})
	if fb.lost.Load() != 1 {
		t.Fatalf("%d acks lost, want 1", fb.lost.Load())
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1, "c": 1})
}

func TestExpiredLease(t *testing.T) {
	t.Parallel()
	// b sleeps past its lease while renewals are lost: the job is delivered again and b
	// runs twice, concurrently, but its completion counts once and c runs once.
	fb := &faultyBackend{Backend: mem.New()}
	fb.loseExtend.Store(true)
	c := runtime.New(fb)
	t.Cleanup(func() { c.Close() })
	f := newFlow("expired-lease").
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			if t.Attempt == 1 {
				time.Sleep(250 * time.Millisecond)
			}
			return from("a", mul(2))(ctx, t)
		}, attempts(3, 0)).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(60*time.Millisecond))

	if got := runInt(t, c, wf, 1); got != 5 {
		t.Errorf("result = %d, want 5", got)
	}
	time.Sleep(300 * time.Millisecond) // the first, slow execution finishes too
	if n := f.count("b"); n < 2 {
		t.Errorf("b ran %d times; the expired lease should have redelivered it", n)
	}
	wantCounts(t, f, map[string]int{"a": 1, "c": 1})
}

func TestExpiredLeaseCountsAsAnAttempt(t *testing.T) {
	t.Parallel()
	// b has one attempt and outlives its lease (renewals lost), as if its worker had
	// died: the redelivery counts as a second attempt, so b is not run again and the
	// run fails at b.
	fb := &faultyBackend{Backend: mem.New()}
	fb.loseExtend.Store(true)
	c := runtime.New(fb)
	t.Cleanup(func() { c.Close() })
	f := newFlow("lease-attempts").
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			time.Sleep(150 * time.Millisecond)
			return from("a", mul(2))(ctx, t)
		}).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(50*time.Millisecond))

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "b", "lease expired", "2 attempt")
	time.Sleep(150 * time.Millisecond) // the first execution finishes, and changes nothing
	wantCounts(t, f, map[string]int{"b": 1, "c": 0})
}
