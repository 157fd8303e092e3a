package backendtest

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
)

// Tests of the worker itself: its concurrency bound, graceful shutdown, and
// cancellation seen through the heartbeat.

// gauge tracks how many executions are in flight, and the most seen at once.
type gauge struct{ now, max atomic.Int32 }

func (g *gauge) enter() {
	n := g.now.Add(1)
	for m := g.max.Load(); n > m && !g.max.CompareAndSwap(m, n); m = g.max.Load() {
	}
}

func (g *gauge) leave() { g.now.Add(-1) }

func (s *suite) concurrencyBound(t *testing.T) {
	var g gauge
	slow := func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		g.enter()
		defer g.leave()
		time.Sleep(150 * time.Millisecond) // long enough to overlap on any backend
		return from("a", add(1))(ctx, t)
	}
	f := newFlow("bound").node("a", fromRun(add(0)))
	srcs := []string{"n0", "n1", "n2", "n3", "n4", "n5"}
	for _, id := range srcs {
		f.node(id, slow).edge("a", id)
	}
	f.node("join", joinStruct(sum, srcs...))
	for _, id := range srcs {
		f.edge(id, "join")
	}
	wf := f.build()
	c := s.client(t)
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithConcurrency(2))

	if got := runInt(t, c, wf, 1); got != 12 {
		t.Errorf("result = %d, want 6*2", got)
	}
	if m := g.max.Load(); m != 2 {
		t.Errorf("at most %d nodes ran at once, want 2", m)
	}
}

func (s *suite) concurrencyOne(t *testing.T) {
	// With one slot, subflows, batches and joins still make progress: no node holds a
	// slot while it waits for others.
	batch := batchFlow("one-batch")
	child := newFlow("one-child").node("c1", fromRun(add(1)))
	parent := newFlow("one-parent").
		node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "one-batch" }).
		node("other", fromRun(add(0))).
		node("sub2", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "one-child" }).
		node("join", func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
			var squares []int
			var one int
			if err := t.DecodeOutput("sub", &squares); err != nil {
				return runtime.Output{}, err
			}
			if err := t.DecodeOutput("sub2", &one); err != nil {
				return runtime.Output{}, err
			}
			s := one
			for _, v := range squares {
				s += v
			}
			return runtime.Encode(s)
		}).
		edge("other", "sub2").edge("sub", "join").edge("sub2", "join")
	bwf, cwf, pwf := batch.build(), child.build(), parent.build()
	c := s.client(t)
	s.startWorker(t, c, []*runtime.Workflow{bwf, cwf, pwf}, runtime.WithConcurrency(1))

	// The batch is 1..3 squared (14), the other child adds 1 to the input.
	if got := runInt(t, c, pwf, 3); got != 14+4 {
		t.Errorf("result = %d, want 14+4", got)
	}
}

func (s *suite) gracefulShutdown(t *testing.T) {
	started := make(chan struct{})
	var finished atomic.Bool
	f := newFlow("shutdown").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			close(started)
			time.Sleep(100 * time.Millisecond)
			if ctx.Err() != nil {
				return runtime.Output{}, errors.New("a's ctx ended with the worker's")
			}
			finished.Store(true)
			return fromRun(add(1))(ctx, t)
		}).
		node("b", from("a", add(1))).
		edge("a", "b")
	wf := f.build()
	c := s.client(t)
	stop := s.startWorker(t, c, []*runtime.Workflow{wf})
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	stop() // returns once a finished
	if !finished.Load() {
		t.Fatal("the worker stopped before its node in flight finished")
	}
	if f.count("b") != 0 {
		t.Fatal("a stopped worker started b")
	}
	// a's completion was recorded: a new worker continues with b only.
	s.startWorker(t, c, []*runtime.Workflow{wf})
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "3" {
		t.Fatalf("Await = %s, %v; want 3", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1})
}

func (s *suite) cancelFromAnotherProcess(t *testing.T) {
	// The run is cancelled through another client on the same backend, as from another
	// process: the worker learns it from its heartbeat and cancels the node in flight.
	cancelled := make(chan error, 1)
	f := newFlow("cancel-remote").
		node("a", func(ctx context.Context, _ *runtime.Task) (runtime.Output, error) {
			<-ctx.Done()
			cancelled <- ctx.Err()
			return runtime.Output{}, ctx.Err()
		}).
		node("b", from("a", add(1))).
		edge("a", "b")
	wf := f.build()
	c := s.client(t)
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(s.lease(300*time.Millisecond)))
	other := runtime.New(c.Backend())
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, other, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a to start", func() bool { return f.count("a") == 1 })
	if err := other.CancelRun(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Await(ctx, other, id); !errors.Is(err, runtime.ErrRunCancelled) {
		t.Fatalf("Await = %v, want ErrRunCancelled", err)
	}
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a's ctx ended with %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("a's ctx was never cancelled")
	}
	time.Sleep(20 * time.Millisecond)
	wantCounts(t, f, map[string]int{"a": 1, "b": 0})
}

func (s *suite) severalWorkers(t *testing.T) {
	// Three workers, each with its own client, share one backend and many runs: every
	// run completes with its result and every node runs once per run.
	b, _ := s.open(t)
	f := newFlow("shared").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		node("c", from("a", mul(3))).
		node("first", fromArrived(add(0)), join(runtime.JoinAny)).
		node("both", joinStruct(sum, "b", "c")).
		node("end", joinStruct(sum, "first", "both")).
		edge("a", "b").edge("a", "c").
		edge("b", "first").edge("c", "first").
		edge("b", "both").edge("c", "both").
		edge("first", "end").edge("both", "end")
	wf := f.build()
	for range 3 {
		s.startWorker(t, runtime.New(b), []*runtime.Workflow{wf}, runtime.WithConcurrency(2))
	}
	c := runtime.New(b)
	ctx := ctxT(t)
	const runs = 30
	ids := make([]runtime.RunID, runs)
	for i := range ids {
		var err error
		if ids[i], err = runtime.Start(ctx, c, wf, i); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		res, err := runtime.Await(ctx, c, id)
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		// first is 2(i+1) or 3(i+1), both is 5(i+1).
		if got := decodeInt(t, res); got != 7*(i+1) && got != 8*(i+1) {
			t.Errorf("run %d: result = %d, want %d or %d", i, got, 7*(i+1), 8*(i+1))
		}
	}
	wantCounts(t, f, map[string]int{"a": runs, "b": runs, "c": runs, "first": runs, "both": runs, "end": runs})
}
