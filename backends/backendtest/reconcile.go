package backendtest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Cases of the reconciler (Worker.Reconcile). A worker that dies after recording a
// completion and before enqueueing what follows is simulated by a faulty backend that
// drops the jobs of the transition: the run then stalls, with its successors claimed
// and never run, until the reconciler enqueues them again.

// stalledAfter is the reconciler's threshold in these cases.
const stalledAfter = 150 * time.Millisecond

// stall waits until run id is running and made no progress for d.
func stall(t *testing.T, c *runtime.Client, id runtime.RunID, d time.Duration) {
	t.Helper()
	eventually(t, "the run to stall", func() bool {
		info, err := c.Status(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != backend.Running {
			t.Fatalf("run %s is %s, want it stalled", id, info.Status)
		}
		return time.Since(info.Updated) > d
	})
}

// dropNodes makes fb drop the jobs of the given nodes; none when no node is given.
func dropNodes(fb *faulty, nodes ...string) {
	fb.set(func(f *faulty) {
		f.drop = nil
		if len(nodes) == 0 {
			return
		}
		drop := map[string]bool{}
		for _, n := range nodes {
			drop[n] = true
		}
		f.drop = func(j backend.Job) bool { return drop[j.Node] }
	})
}

// wantStats checks the stats of a reconciliation.
func wantStats(t *testing.T, got runtime.ReconcileStats, err error, want runtime.ReconcileStats) {
	t.Helper()
	if err != nil || got != want {
		t.Fatalf("Reconcile = %+v, %v; want %+v", got, err, want)
	}
}

func (s *suite) reconcileLostSuccessors(t *testing.T) {
	// b's completion is recorded, and c's job lost: the run stalls. Two reconcilers run
	// at once; one of them enqueues c, and the run completes once.
	fb, c := s.faulty(t)
	f := newFlow("lost-successors").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		node("c", from("b", add(1))).
		node("d", from("c", mul(10))).
		edge("a", "b").edge("b", "c").edge("c", "d")
	wf := f.build()
	dropNodes(fb, "c")
	w1 := s.newWorker(t, c, []*runtime.Workflow{wf})
	w2 := s.newWorker(t, runtime.New(fb), []*runtime.Workflow{wf})
	runWorker(t, w1)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to complete, and c's job to be lost", func() bool { return fb.ackedWhere(isNode("b")) > 0 })
	stall(t, c, id, stalledAfter)
	wantCounts(t, f, map[string]int{"b": 1, "c": 0})

	dropNodes(fb)
	// Both reconcilers list the stalled run before either reconciles it.
	var listed sync.WaitGroup
	listed.Add(2)
	fb.set(func(f *faulty) { f.afterList = func() { listed.Done(); listed.Wait() } })
	var wg sync.WaitGroup
	stats := make([]runtime.ReconcileStats, 2)
	errs := make([]error, 2)
	for i, w := range []*runtime.Worker{w1, w2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i], errs[i] = w.Reconcile(ctx, stalledAfter)
		}()
	}
	wg.Wait()
	fb.set(func(f *faulty) { f.afterList = nil })
	// The reconcilers' transitions are serialized: the first enqueues c, the second
	// finds that the run progressed and leaves it alone.
	reconciled := 0
	for i := range stats {
		if st := stats[i]; errs[i] != nil || st.Failed != 0 || st.Scanned != 1 || st.Stalled != st.Reconciled {
			t.Errorf("reconciler %d: %+v, %v", i, st, errs[i])
		}
		reconciled += stats[i].Reconciled
	}
	if reconciled != 1 {
		t.Fatalf("%d reconcilers reconciled the stalled run, want 1: %+v", reconciled, stats)
	}
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "50" {
		t.Fatalf("Await = %s, %v; want ((1+1)*2+1)*10", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1, "c": 1, "d": 1})
	// Nothing is left to reconcile.
	time.Sleep(stalledAfter)
	st, err := w1.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{})
}

func (s *suite) reconcileFollowsRecordedRouting(t *testing.T) {
	// route took the left branch and its successors' jobs were lost: the reconciler
	// enqueues l only, never the right branch, and the join behind both runs once.
	fb, c := s.faulty(t)
	f := newFlow("reconcile-routing").
		node("start", fromRun(add(0))).
		node("route", routed("start", leftOrRight)).
		node("l", from("route", add(1))).
		node("r1", from("route", add(2))).
		node("r2", from("r1", add(3))).
		node("join", joinStruct(func(in map[string]*int) (int, error) {
			if in["r2"] != nil {
				return 0, runtime.Permanent(errors.New("r2 ran"))
			}
			return *in["l"] * 10, nil
		}, "l", "r2")).
		edge("start", "route").
		edge("route", "l", action("left")).edge("route", "r1", action("right")).
		edge("r1", "r2").edge("l", "join").edge("r2", "join")
	wf := f.build()
	dropNodes(fb, "l", "r1")
	w := s.newWorker(t, c, []*runtime.Workflow{wf})
	runWorker(t, w)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 4)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "route to complete, and l's job to be lost", func() bool { return fb.ackedWhere(isNode("route")) > 0 })
	stall(t, c, id, stalledAfter)

	dropNodes(fb)
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 1, Stalled: 1, Reconciled: 1})
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "50" {
		t.Fatalf("Await = %s, %v; want (4+1)*10", res, err)
	}
	wantCounts(t, f, map[string]int{"route": 1, "l": 1, "r1": 0, "r2": 0, "join": 1})
	if n := fb.deliveredWhere(func(j backend.Job) bool { return j.Node == "r1" || j.Node == "r2" }); n != 0 {
		t.Errorf("%d jobs of the untaken branch were delivered", n)
	}
}

func (s *suite) reconcileStats(t *testing.T) {
	// Five runs: two stalled runs of the reconciler's workflow (one of which it cannot
	// update), a stalled run of a workflow it does not have, a completed run and a run
	// that just started. The stats count exactly the first three, and the runs it
	// reconciled complete.
	const stalledAfter = 500 * time.Millisecond // the fresh run must stay fresh
	fb, c := s.faulty(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	f := newFlow("reconcile-stats").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			var in int
			if err := runtime.Decode(t.RunInput(), &in); err != nil {
				return runtime.Output{}, err
			}
			if in < 0 {
				<-release
			}
			return runtime.Encode(in + 1)
		}).
		node("b", from("a", mul(2))).
		edge("a", "b")
	wf := f.build()
	stranger := newFlow("stranger").node("x", fromRun(add(1))).build()
	w := s.newWorker(t, c, []*runtime.Workflow{wf})
	runWorker(t, w)
	// A failing check must not leave the fresh run's node blocked: the worker's
	// cleanup, which runs after this one, waits for it.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	ctx := ctxT(t)

	done, err := runtime.Start(ctx, c, wf, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Await(ctx, c, done); err != nil {
		t.Fatal(err)
	}
	dropNodes(fb, "b")
	lost, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	failing, err := runtime.Start(ctx, c, wf, 2)
	if err != nil {
		t.Fatal(err)
	}
	alien, err := runtime.Start(ctx, c, stranger, 3) // no worker has it
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a to complete in both runs, and b's jobs to be lost", func() bool {
		return fb.ackedWhere(func(j backend.Job) bool {
			return j.Node == "a" && (j.Run == string(lost) || j.Run == string(failing))
		}) == 2
	})
	stall(t, c, lost, stalledAfter)
	stall(t, c, failing, stalledAfter)
	stall(t, c, alien, stalledAfter)
	fresh, err := runtime.Start(ctx, c, wf, -1)
	if err != nil {
		t.Fatal(err)
	}
	dropNodes(fb)
	fb.set(func(f *faulty) {
		f.failUpdate = func(run string) error {
			if run == string(failing) {
				return errors.New("store unavailable")
			}
			return nil
		}
	})
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 3, Stalled: 2, Reconciled: 1, Failed: 1})
	if res, err := runtime.Await(ctx, c, lost); err != nil || string(res) != "4" {
		t.Fatalf("the reconciled run: %s, %v; want (1+1)*2", res, err)
	}
	wantStatus(t, c, failing, "running")

	// The store is back: the next pass reconciles the other run.
	fb.set(func(f *faulty) { f.failUpdate = nil })
	releaseOnce.Do(func() { close(release) })
	if _, err := runtime.Await(ctx, c, fresh); err != nil {
		t.Fatal(err)
	}
	stall(t, c, failing, stalledAfter)
	st, err = w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 2, Stalled: 1, Reconciled: 1})
	if res, err := runtime.Await(ctx, c, failing); err != nil || string(res) != "6" {
		t.Fatalf("the run reconciled second: %s, %v; want (2+1)*2", res, err)
	}
	wantStatus(t, c, alien, "running")
	wantCounts(t, f, map[string]int{"b": 4})
}

func (s *suite) reconcileLoopAndBatch(t *testing.T) {
	// Jobs lost inside a loop (the body's second iteration) and a batch (one item):
	// the reconciler finds the open iteration and item from the recorded claims.
	fb, c := s.faulty(t)
	var last atomic.Int64
	loop := loopFlow("reconcile-loop", 20, 0, &last)
	batch := batchFlow("reconcile-batch")
	lwf, bwf := loop.build(), batch.build()
	dropNodes(fb, "b1@1", "scatter#2")
	w := s.newWorker(t, c, []*runtime.Workflow{lwf, bwf})
	runWorker(t, w)
	ctx := ctxT(t)
	lid, err := runtime.Start(ctx, c, lwf, 0)
	if err != nil {
		t.Fatal(err)
	}
	bid, err := runtime.Start(ctx, c, bwf, 5)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the loop's second iteration and the scatter to start, and their jobs to be lost", func() bool {
		return fb.ackedWhere(isNode("ctrl@1")) > 0 && fb.ackedWhere(isNode("scatter")) > 0
	})
	stall(t, c, lid, stalledAfter)
	stall(t, c, bid, stalledAfter)

	dropNodes(fb)
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 2, Stalled: 2, Reconciled: 2})
	if got := decodeInt(t, mustAwait(t, c, lid)); got != 1030 {
		t.Errorf("loop result = %d, want 30+1000", got)
	}
	if got := string(mustAwait(t, c, bid)); got != "[1,4,9,16,25]" {
		t.Errorf("batch result = %s, want [1,4,9,16,25]", got)
	}
	wantCounts(t, loop, map[string]int{"init": 1, "b1": 4, "b2": 4, "exit": 1})
	wantCounts(t, batch, map[string]int{"prep": 1, "scatter": 5})
}

func (s *suite) reconcileLostChildDone(t *testing.T) {
	// The child run of a subflow completes, and the notification to its parent is lost:
	// the reconciler enqueues the parent's subflow node again, which finds the child
	// ended and completes with its result, without starting another child.
	fb, c := s.faulty(t)
	child := newFlow("lost-child").
		node("c1", fromRun(add(1))).
		node("c2", from("c1", mul(2))).
		edge("c1", "c2")
	parent := newFlow("lost-parent").
		node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "lost-child" }).
		node("after", from("sub", add(1000))).
		edge("sub", "after")
	cwf, pwf := child.build(), parent.build()
	fb.set(func(f *faulty) { f.drop = func(j backend.Job) bool { return j.Kind == backend.ChildDone } })
	w := s.newWorker(t, c, []*runtime.Workflow{cwf, pwf})
	runWorker(t, w)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, pwf, 5)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child to complete, and its notification to be lost", func() bool {
		return fb.ackedWhere(func(j backend.Job) bool { return j.Node == "c2" }) > 0
	})
	stall(t, c, id, stalledAfter)

	dropNodes(fb)
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 1, Stalled: 1, Reconciled: 1})
	if got := decodeInt(t, mustAwait(t, c, id)); got != 1012 {
		t.Errorf("result = %d, want (5+1)*2+1000", got)
	}
	wantCounts(t, child, map[string]int{"c1": 1, "c2": 1})
	wantCounts(t, parent, map[string]int{"after": 1})
}

func (s *suite) reconcileLostResume(t *testing.T) {
	// ResumeRun records the resume and its job is lost: the reconciler enqueues the
	// wait node again, which completes with the recorded action and output.
	fb, c := s.faulty(t)
	f := newFlow("lost-resume").
		node("a", fromRun(add(1))).
		node("review", nil, kind(runtime.KindWait)).
		node("approved", from("review", add(100))).
		node("rejected", from("review", mul(-1))).
		edge("a", "review").
		edge("review", "approved", action("approve")).
		edge("review", "rejected", action("reject"))
	wf := f.build()
	fb.set(func(f *faulty) { f.drop = func(j backend.Job) bool { return j.Kind == backend.Resume } })
	w := s.newWorker(t, c, []*runtime.Workflow{wf})
	runWorker(t, w)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	resume(t, c, id, "review", "approve", 7)
	stall(t, c, id, stalledAfter)

	dropNodes(fb)
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 1, Stalled: 1, Reconciled: 1})
	if got := string(mustAwait(t, c, id)); got != `{"approved":107}` {
		t.Errorf("result = %s, want the resumed output 7 + 100 on the approve branch", got)
	}
	wantCounts(t, f, map[string]int{"a": 1, "approved": 1, "rejected": 0})
}

func (s *suite) reconcileSleepAndWait(t *testing.T) {
	// A run sleeping and a run waiting make no progress, by design: the reconciler
	// leaves them alone. Once the sleep's wake-up time has passed, its lost job is
	// enqueued again.
	const nap = 1500 * time.Millisecond
	fb, c := s.faulty(t)
	sleeper := newFlow("reconcile-sleep").
		node("a", fromRun(add(1))).
		node("nap", nil, kind(runtime.KindSleep), func(n *runtime.Node) { n.Sleep = nap }).
		node("b", from("nap", mul(2))).
		edge("a", "nap").edge("nap", "b")
	waiter := newFlow("reconcile-wait").
		node("a", fromRun(add(1))).
		node("review", nil, kind(runtime.KindWait)).
		node("approved", from("review", add(100))).
		edge("a", "review").edge("review", "approved", action("approve"))
	swf, wwf := sleeper.build(), waiter.build()
	isNap := isNode("nap")
	fb.set(func(f *faulty) { f.drop = func(j backend.Job) bool { return isNap(j) && !j.NotBefore.IsZero() } })
	w := s.newWorker(t, c, []*runtime.Workflow{swf, wwf})
	runWorker(t, w)
	ctx := ctxT(t)
	sid, err := runtime.Start(ctx, c, swf, 1)
	if err != nil {
		t.Fatal(err)
	}
	wid, err := runtime.Start(ctx, c, wwf, 1)
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	eventually(t, "the sleep to start, and its postponed job to be lost", func() bool { return fb.ackedWhere(isNap) > 0 })
	awake := time.Now().Add(nap) // the wake-up time was recorded before the job was lost
	eventually(t, "the wait node to wait", func() bool { return fb.ackedWhere(isNode("review")) > 0 })
	stall(t, c, sid, stalledAfter)
	stall(t, c, wid, stalledAfter)
	if time.Since(begin) > nap/2 {
		t.Skipf("the backend took %v to get here; the sleep is nearly over", time.Since(begin))
	}
	st, err := w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 2})

	time.Sleep(time.Until(awake))
	dropNodes(fb)
	st, err = w.Reconcile(ctx, stalledAfter)
	wantStats(t, st, err, runtime.ReconcileStats{Scanned: 2, Stalled: 1, Reconciled: 1})
	if got := string(mustAwait(t, c, sid)); got != "4" {
		t.Errorf("the sleeping run's result = %s, want (1+1)*2", got)
	}
	resume(t, c, wid, "review", "approve", 1)
	if got := string(mustAwait(t, c, wid)); got != `101` {
		t.Errorf("the waiting run's result = %s, want 1+100", got)
	}
	if n := fb.deliveredWhere(func(j backend.Job) bool { return j.Node == "review" && j.Kind == backend.Exec }); n != 1 {
		t.Errorf("the wait node's job was delivered %d times, want once (then resumed)", n)
	}
}

// mustAwait awaits run id and returns its result, failing the test on a run error.
func mustAwait(t *testing.T, c *runtime.Client, id runtime.RunID) []byte {
	t.Helper()
	res, err := runtime.Await(ctxT(t), c, id)
	if err != nil {
		t.Fatalf("run %s: %v", id, err)
	}
	return res
}
