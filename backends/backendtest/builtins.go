package backendtest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Tests of the built-in nodes: loop controllers, batch scatter/gather, subflows, sleep
// and wait.

// loopFlow is
//
//	init -> ctrl -continue-> b1 -> b2 -> ctrl (back edge)
//	        ctrl -break-> exit
//
// with b1 adding 1 and b2 doubling, looping while the value is below limit.
func loopFlow(id string, limit, maxIterations int, iterations *atomic.Int64) *flow {
	return newFlow(id).
		node("init", fromRun(add(0))).
		node("ctrl", nil, kind(runtime.KindLoop), inLoop("ctrl"), intCond(func(out, it int) bool {
			iterations.Store(int64(it))
			return out < limit
		}), func(n *runtime.Node) { n.MaxIterations = maxIterations }).
		node("b1", from("ctrl", add(1)), inLoop("ctrl")).
		node("b2", from("b1", mul(2)), inLoop("ctrl")).
		node("exit", from("ctrl", add(1000))).
		edge("init", "ctrl").
		edge("ctrl", "b1", action(runtime.ActionContinue)).
		edge("ctrl", "exit", action(runtime.ActionBreak)).
		edge("b1", "b2").edge("b2", "ctrl")
}

func (s *suite) loop(t *testing.T) {
	var last atomic.Int64
	f := loopFlow("loop", 20, 0, &last)
	wf := f.build()
	if got := wf.Nodes["ctrl"].LoopPreds; len(got) != 1 || got[0] != "b2" {
		t.Fatalf("ctrl.LoopPreds = %v, want [b2]", got)
	}
	c := s.setup(t, wf)

	// 0 -> 1 -> 2 -> 3 -> 6 -> 7 -> 14 -> 15 -> 30: four iterations, the fifth breaks.
	if got := runInt(t, c, wf, 0); got != 1030 {
		t.Errorf("result = %d, want 30+1000", got)
	}
	wantCounts(t, f, map[string]int{"init": 1, "b1": 4, "b2": 4, "exit": 1})
	if it := last.Load(); it != 4 {
		t.Errorf("the loop broke at iteration %d, want 4", it)
	}

	t.Run("breaks at once", func(t *testing.T) {
		if got := runInt(t, c, wf, 25); got != 1025 {
			t.Errorf("result = %d, want 25+1000", got)
		}
		wantCounts(t, f, map[string]int{"init": 2, "b1": 4, "exit": 2})
	})
}

func (s *suite) loopMaxIterations(t *testing.T) {
	var last atomic.Int64
	f := loopFlow("loop-max", 1_000_000, 3, &last)
	wf := f.build()
	c := s.setup(t, wf)

	_, err := run(t, c, wf, 0)
	wantRunError(t, err, "ctrl", "3 iterations")
	wantCounts(t, f, map[string]int{"b1": 3, "exit": 0})
}

func (s *suite) loopBehindUntakenBranch(t *testing.T) {
	// route sends odd inputs right, past the loop: the loop and its exit are skipped,
	// and the join after them still runs.
	var last atomic.Int64
	f := loopFlow("loop-skipped", 20, 0, &last)
	f.node("start", fromRun(add(0))).
		node("route", routed("start", leftOrRight)).
		node("other", from("route", add(1))).
		node("join", joinStruct(sum, "exit", "other"))
	f.wf.Nodes["init"].Exec = f.counted("init", from("route", add(0))) // no longer a start node
	f.edge("start", "route").
		edge("route", "init", action("left")).edge("route", "other", action("right")).
		edge("exit", "join").edge("other", "join")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 3); got != 4 {
		t.Errorf("odd input: result = %d, want 3+1", got)
	}
	wantCounts(t, f, map[string]int{"init": 0, "b1": 0, "exit": 0, "other": 1, "join": 1})
	if got := runInt(t, c, wf, 2); got != 1030 {
		t.Errorf("even input: result = %d, want 30+1000 from the loop's exit", got)
	}
	// 2 -> 3 -> 6 -> 7 -> 14 -> 15 -> 30: three iterations.
	wantCounts(t, f, map[string]int{"init": 1, "b1": 3, "exit": 1, "other": 1, "join": 2})
}

func (s *suite) nestedLoops(t *testing.T) {
	// init -> outer -continue-> p -> inner -continue-> b -> inner
	//                                inner -break-> q -> outer
	//         outer -break-> exit
	// The outer loop runs three times: p multiplies by 10, the inner loop adds 1 twice.
	whileBelow := func(n int) func(*runtime.Node) {
		return intCond(func(_, it int) bool { return it < n })
	}
	f := newFlow("nested").
		node("init", fromRun(add(0))).
		node("outer", nil, kind(runtime.KindLoop), inLoop("outer"), whileBelow(3)).
		node("p", from("outer", mul(10)), inLoop("outer")).
		node("inner", nil, kind(runtime.KindLoop), inLoopAt("inner", 2), whileBelow(2)).
		node("b", from("inner", add(1)), inLoopAt("inner", 2)).
		node("q", from("inner", add(0)), inLoop("outer")).
		node("exit", from("outer", add(0))).
		edge("init", "outer").
		edge("outer", "p", action(runtime.ActionContinue)).
		edge("outer", "exit", action(runtime.ActionBreak)).
		edge("p", "inner").
		edge("inner", "b", action(runtime.ActionContinue)).
		edge("inner", "q", action(runtime.ActionBreak)).
		edge("b", "inner").edge("q", "outer")
	wf := f.build()
	c := s.setup(t, wf)

	// 0 -> p 0 -> 1, 2 -> q 2 -> p 20 -> 21, 22 -> q 22 -> p 220 -> 221, 222 -> exit 222.
	if got := runInt(t, c, wf, 0); got != 222 {
		t.Errorf("result = %d, want 222", got)
	}
	wantCounts(t, f, map[string]int{"p": 3, "b": 6, "q": 3, "exit": 1})
}

// batchFlow is prep -> scatter (items squared) -> gather, with items finishing in
// reverse order.
func batchFlow(id string) *flow {
	prep := func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
		var n int
		if err := runtime.Decode(t.RunInput(), &n); err != nil {
			return runtime.Output{}, err
		}
		items := make([]int, n)
		for i := range items {
			items[i] = i + 1
		}
		return runtime.Encode(items)
	}
	square := func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
		var v int
		if err := runtime.Decode(t.ItemInput(), &v); err != nil {
			return runtime.Output{}, err
		}
		time.Sleep(time.Duration(10-t.Item) * 2 * time.Millisecond) // later items finish first
		return runtime.Encode(v * v)
	}
	return newFlow(id).
		node("prep", prep).
		node("scatter", square, kind(runtime.KindBatchScatter), func(n *runtime.Node) { n.Gather = "gather" }).
		node("gather", nil, kind(runtime.KindBatchGather), func(n *runtime.Node) { n.Scatter = "scatter" }).
		edge("prep", "scatter").edge("scatter", "gather")
}

func (s *suite) batch(t *testing.T) {
	f := batchFlow("batch")
	wf := f.build()
	c := s.setup(t, wf)

	for _, tc := range []struct {
		n    int
		want string
	}{
		{5, "[1,4,9,16,25]"},
		{1, "[1]"},
		{0, "[]"},
	} {
		res, err := run(t, c, wf, tc.n)
		if err != nil {
			t.Fatalf("batch of %d: %v", tc.n, err)
		}
		if string(res) != tc.want {
			t.Errorf("batch of %d: result = %s, want %s", tc.n, res, tc.want)
		}
	}
	wantCounts(t, f, map[string]int{"prep": 3, "scatter": 6})
}

func (s *suite) batchItemRetryAndFailure(t *testing.T) {
	var failures atomic.Int32
	f := batchFlow("batch-retry")
	f.wf.Nodes["scatter"].MaxAttempts = 2
	f.wf.Nodes["scatter"].Exec = f.counted("scatter", fromItem(func(_ context.Context, v int) (int, error) {
		if v == 3 && failures.Add(1) == 1 {
			return 0, errors.New("item 3 hiccup")
		}
		if v == 13 {
			return 0, errors.New("item 13 is cursed")
		}
		return -v, nil
	}))
	wf := f.build()
	c := s.setup(t, wf)

	res, err := run(t, c, wf, 4)
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != "[-1,-2,-3,-4]" {
		t.Errorf("result = %s, want [-1,-2,-3,-4]", res)
	}
	wantCounts(t, f, map[string]int{"scatter": 5})

	_, err = run(t, c, wf, 15)
	wantRunError(t, err, "scatter", "item 13 is cursed")
}

func (s *suite) batchBehindUntakenBranch(t *testing.T) {
	f := batchFlow("batch-skipped")
	f.node("start", fromRun(add(0))).
		node("route", routed("start", leftOrRight)).
		node("other", from("route", add(1))).
		node("join", joinStruct(sum, "other")).
		edge("start", "route").
		edge("route", "prep", action("left")).edge("route", "other", action("right")).
		edge("gather", "join").edge("other", "join")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 3); got != 4 {
		t.Errorf("result = %d, want 3+1", got)
	}
	wantCounts(t, f, map[string]int{"prep": 0, "scatter": 0, "other": 1, "join": 1})
}

func (s *suite) subflow(t *testing.T) {
	child := newFlow("child").
		node("c1", fromRun(add(1))).
		node("c2", from("c1", mul(2))).
		edge("c1", "c2")
	parent := newFlow("parent").
		node("p1", fromRun(add(10))).
		node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "child" }).
		node("p2", from("sub", add(1000))).
		edge("p1", "sub").edge("sub", "p2")
	cwf, pwf := child.build(), parent.build()
	c := s.setup(t, cwf, pwf)

	// p1: 15; child: 16, 32; p2: 1032.
	if got := runInt(t, c, pwf, 5); got != 1032 {
		t.Errorf("result = %d, want (5+10+1)*2+1000", got)
	}
	wantCounts(t, child, map[string]int{"c1": 1, "c2": 1})
	wantCounts(t, parent, map[string]int{"p1": 1, "p2": 1})
	runs, err := c.ListRuns(ctxT(t), "completed", 0)
	if err != nil || len(runs) != 2 {
		t.Fatalf("ListRuns = %v, %v; want the parent and the child", runs, err)
	}

	t.Run("child fails", func(t *testing.T) {
		child := newFlow("bad-child").
			node("c1", func(context.Context, *runtime.Task) (runtime.Output, error) {
				return runtime.Output{}, errors.New("child broke")
			})
		parent := newFlow("bad-parent").
			node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "bad-child" }).
			node("after", from("sub", add(1))).
			edge("sub", "after")
		cwf, pwf := child.build(), parent.build()
		c := s.setup(t, cwf, pwf)
		_, err := run(t, c, pwf, 1)
		wantRunError(t, err, "sub", "child broke", `"c1"`)
		wantCounts(t, parent, map[string]int{"after": 0})
	})
}

func (s *suite) cancelSubflow(t *testing.T) {
	// Cancelling the parent cancels the child run and its node in flight.
	cancelled := make(chan error, 1)
	child := newFlow("cancel-child").
		node("c1", func(ctx context.Context, _ *runtime.Task) (runtime.Output, error) {
			<-ctx.Done()
			cancelled <- ctx.Err()
			return runtime.Output{}, ctx.Err()
		}).
		node("c2", from("c1", add(1))).
		edge("c1", "c2")
	parent := newFlow("cancel-parent").
		node("sub", nil, kind(runtime.KindSubflow), func(n *runtime.Node) { n.Subflow = "cancel-child" }).
		node("after", from("sub", add(1))).
		edge("sub", "after")
	cwf, pwf := child.build(), parent.build()
	c := s.setup(t, cwf, pwf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, pwf, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child's node to start", func() bool { return child.count("c1") == 1 })
	if err := c.CancelRun(ctx, id, "stop"); err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Await(ctx, c, id); !errors.Is(err, runtime.ErrRunCancelled) {
		t.Fatalf("Await(parent) = %v, want ErrRunCancelled", err)
	}
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("the child's node ended with %v, want context.Canceled", err)
	}
	runs, err := c.ListRuns(ctx, "cancelled", 0)
	if err != nil || len(runs) != 2 {
		t.Fatalf("cancelled runs = %v, %v; want the parent and its child", runs, err)
	}
	time.Sleep(20 * time.Millisecond)
	wantCounts(t, child, map[string]int{"c2": 0})
	wantCounts(t, parent, map[string]int{"after": 0})
}

func (s *suite) sleep(t *testing.T) {
	const nap = 150 * time.Millisecond
	var mu sync.Mutex
	var aDone, bStart time.Time
	f := newFlow("sleep").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			defer func() { mu.Lock(); aDone = time.Now(); mu.Unlock() }()
			return fromRun(add(1))(ctx, t)
		}).
		node("nap", nil, kind(runtime.KindSleep), func(n *runtime.Node) { n.Sleep = nap }).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			mu.Lock()
			bStart = time.Now()
			mu.Unlock()
			return from("nap", mul(2))(ctx, t)
		}).
		edge("a", "nap").edge("nap", "b")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 1); got != 4 {
		t.Errorf("result = %d, want (1+1)*2 (sleep passes its input through)", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if d := bStart.Sub(aDone); d < nap {
		t.Errorf("b started %v after a, want >= %v", d, nap)
	}
}

func (s *suite) sleepBeforeJoin(t *testing.T) {
	// a -> nap -> join, a -> b -> join: the join waits for the sleep to end, although b
	// arrives at once.
	const nap = 100 * time.Millisecond
	var mu sync.Mutex
	var aDone, joinStart time.Time
	f := newFlow("sleep-join").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			defer func() { mu.Lock(); aDone = time.Now(); mu.Unlock() }()
			return fromRun(add(1))(ctx, t)
		}).
		node("nap", nil, kind(runtime.KindSleep), func(n *runtime.Node) { n.Sleep = nap }).
		node("b", from("a", mul(10))).
		node("join", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			mu.Lock()
			joinStart = time.Now()
			mu.Unlock()
			return joinStruct(sum, "nap", "b")(ctx, t)
		}).
		edge("a", "nap").edge("a", "b").edge("nap", "join").edge("b", "join")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 1); got != 22 {
		t.Errorf("result = %d, want 2+20", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if d := joinStart.Sub(aDone); d < nap {
		t.Errorf("join started %v after a, want >= %v", d, nap)
	}

	t.Run("terminal", func(t *testing.T) {
		f := newFlow("sleep-last").
			node("a", fromRun(add(1))).
			node("nap", nil, kind(runtime.KindSleep), func(n *runtime.Node) { n.Sleep = nap }).
			edge("a", "nap")
		wf := f.build()
		c := s.setup(t, wf)
		begin := time.Now()
		if got := runInt(t, c, wf, 1); got != 2 {
			t.Errorf("result = %d, want 2", got)
		}
		if d := time.Since(begin); d < nap {
			t.Errorf("a run ending in a sleep took %v, want >= %v", d, nap)
		}
	})
}

// resume resumes run id at wait node node once the run waits there.
func resume(t *testing.T, c *runtime.Client, id runtime.RunID, node, action string, output any) {
	t.Helper()
	eventually(t, "the wait node", func() bool {
		err := c.ResumeRun(ctxT(t), id, node, action, output)
		if err != nil && !strings.Contains(err.Error(), "not waiting") {
			t.Fatalf("ResumeRun: %v", err)
		}
		return err == nil
	})
}

func (s *suite) wait(t *testing.T) {
	f := newFlow("approval").
		node("a", fromRun(add(1))).
		node("review", nil, kind(runtime.KindWait)).
		node("approved", from("review", add(100))).
		node("rejected", from("review", mul(-1))).
		edge("a", "review").
		edge("review", "approved", action("approve")).
		edge("review", "rejected", action("reject"))
	wf := f.build()
	c := s.setup(t, wf)
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	resume(t, c, id, "review", "approve", 7)
	res, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != `{"approved":107}` {
		t.Errorf("result = %s, want the resumed output 7 + 100 on the approve branch", res)
	}
	if err := c.ResumeRun(ctx, id, "review", "approve", 7); err == nil {
		t.Error("resuming a completed run succeeded")
	}

	t.Run("paused until resumed", func(t *testing.T) {
		id, err := runtime.Start(ctx, c, wf, 4)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if info, err := c.Status(ctx, id); err != nil || info.Status != "running" {
			t.Fatalf("status before resuming = %+v, %v; want running", info, err)
		}
		// A nil output keeps the wait node's input (a's output) as its output.
		resume(t, c, id, "review", "reject", nil)
		res, err := runtime.Await(ctx, c, id)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]int
		if err := json.Unmarshal(res, &got); err != nil || len(got) != 1 || got["rejected"] != -5 {
			t.Errorf("result = %s, want {\"rejected\":-5}", res)
		}
	})
	wantCounts(t, f, map[string]int{"a": 2, "approved": 1, "rejected": 1})
}

func (s *suite) sleepSurvivesRestart(t *testing.T) {
	// The worker stops while the run sleeps; a new worker (on a new connection, for a
	// durable backend) wakes the run at the time the sleep began with: the sleep node's
	// job is delivered to it once, when due, and completes the sleep.
	const nap = 600 * time.Millisecond
	var mu sync.Mutex
	var aDone, bStart time.Time
	f := newFlow("sleep-restart").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			defer func() { mu.Lock(); aDone = time.Now(); mu.Unlock() }()
			return fromRun(add(1))(ctx, t)
		}).
		node("nap", nil, kind(runtime.KindSleep), func(n *runtime.Node) { n.Sleep = nap }).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			mu.Lock()
			bStart = time.Now()
			mu.Unlock()
			return from("nap", mul(2))(ctx, t)
		}).
		edge("a", "nap").edge("nap", "b")
	wf := f.build()
	b, url := s.open(t)
	before := &faulty{Backend: b}
	c := runtime.New(before)
	stop := s.startWorker(t, c, []*runtime.Workflow{wf})
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	isNap := isNode("nap")
	eventually(t, "the sleep node to start", func() bool { return before.deliveredWhere(isNap) > 0 })
	stop() // the sleep node's job was handled: its wake-up time is recorded
	if f.count("b") != 0 {
		t.Fatal("b ran before the sleep ended")
	}
	after := &faulty{Backend: s.reopen(t, b, url)}
	c2 := runtime.New(after)
	s.startWorker(t, c2, []*runtime.Workflow{wf})
	res, err := runtime.Await(ctx, c2, id)
	if err != nil || string(res) != "4" {
		t.Fatalf("Await = %s, %v; want (1+1)*2", res, err)
	}
	// A sleep that started over would have been delivered again, and postponed.
	if n := after.deliveredWhere(isNap); n != 1 {
		t.Errorf("after the restart the sleep node's job was delivered %d times, want once (when due)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if d := bStart.Sub(aDone); d < nap {
		t.Errorf("b started %v after a, want >= %v", d, nap)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1})
}

func (s *suite) waitSurvivesRestart(t *testing.T) {
	// The run waits at review when its worker stops; it is resumed while no worker
	// runs, and a new worker continues it with the action and output given.
	f := newFlow("approval-restart").
		node("a", fromRun(add(1))).
		node("review", nil, kind(runtime.KindWait)).
		node("approved", from("review", add(100))).
		node("rejected", from("review", mul(-1))).
		edge("a", "review").
		edge("review", "approved", action("approve")).
		edge("review", "rejected", action("reject"))
	wf := f.build()
	b, url := s.open(t)
	fb := &faulty{Backend: b}
	c := runtime.New(fb)
	stop := s.startWorker(t, c, []*runtime.Workflow{wf})
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the wait node to run", func() bool {
		return fb.deliveredWhere(func(j backend.Job) bool { return j.Node == "review" }) > 0
	})
	stop()
	c2 := runtime.New(s.reopen(t, b, url))
	if err := c2.ResumeRun(ctx, id, "review", "reject", 7); err != nil {
		t.Fatalf("ResumeRun with no worker running: %v", err)
	}
	wantStatus(t, c2, id, "running")
	s.startWorker(t, c2, []*runtime.Workflow{wf})
	res, err := runtime.Await(ctx, c2, id)
	if err != nil || string(res) != `{"rejected":-7}` {
		t.Fatalf("Await = %s, %v; want the resumed output 7 on the reject branch", res, err)
	}
	wantCounts(t, f, map[string]int{"a": 1, "approved": 0, "rejected": 1})
}
