package backendtest

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
)

// Tests of the graph semantics of CONTRACT §6 on the mem backend: sequencing, joins,
// skipping and routing. Failures and built-ins live in their own files.

func (s *suite) linear(t *testing.T) {
	f := newFlow("linear").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		node("c", from("b", add(3))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 4); got != 13 {
		t.Errorf("result = %d, want (4+1)*2+3 = 13", got)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1, "c": 1})

	runs, err := c.ListRuns(ctxT(t), "completed", 0)
	if err != nil || len(runs) != 1 || runs[0].Workflow != "linear" {
		t.Fatalf("ListRuns(completed) = %v, %v; want the one linear run", runs, err)
	}
}

func (s *suite) fanOutFanIn(t *testing.T) {
	f := newFlow("diamond").
		node("a", fromRun(add(0))).
		node("b", from("a", add(1))).
		node("c", from("a", mul(10))).
		node("d", from("a", add(100))).
		node("join", joinStruct(sum, "b", "c", "d")).
		edge("a", "b").edge("a", "c").edge("a", "d").
		edge("b", "join").edge("c", "join").edge("d", "join")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 2); got != 3+20+102 {
		t.Errorf("result = %d, want 3+20+102", got)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1, "c": 1, "d": 1, "join": 1})
}

// leftOrRight routes even numbers left and odd numbers right.
func leftOrRight(in int) runtime.Routed[int] {
	if in%2 == 0 {
		return runtime.Route("left", in)
	}
	return runtime.Route("right", in)
}

func (s *suite) allJoinBehindUntakenBranch(t *testing.T) {
	// a -left-> l ----------> join
	//   -right-> r1 -> r2 -->
	// The right branch is never taken: the join must still run, with r2 absent.
	f := newFlow("untaken").
		node("start", fromRun(add(0))).
		node("a", routed("start", leftOrRight)).
		node("l", from("a", add(1))).
		node("r1", from("a", add(2))).
		node("r2", from("r1", add(3))).
		node("join", joinStruct(func(in map[string]*int) (int, error) {
			if in["r2"] != nil {
				return 0, runtime.Permanent(errors.New("r2 was skipped and must be absent"))
			}
			return *in["l"] * 10, nil
		}, "l", "r2")).
		edge("start", "a").
		edge("a", "l", action("left")).edge("a", "r1", action("right")).
		edge("r1", "r2").edge("l", "join").edge("r2", "join")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 4); got != 50 {
		t.Errorf("result = %d, want (4+1)*10", got)
	}
	wantCounts(t, f, map[string]int{"a": 1, "l": 1, "r1": 0, "r2": 0, "join": 1})
}

func (s *suite) allJoinAllSkipped(t *testing.T) {
	// a's action matches no edge, so only its default edge (to z) is taken; b and c are
	// skipped, so the join and its successor are skipped too.
	f := newFlow("all-skipped").
		node("start", fromRun(add(0))).
		node("a", routed("start", func(in int) runtime.Routed[int] { return runtime.Route("neither", in) })).
		node("b", from("a", add(1))).
		node("c", from("a", add(2))).
		node("join", joinStruct(sum, "b", "c")).
		node("after", from("join", add(1))).
		node("z", from("a", mul(3))).
		edge("start", "a").
		edge("a", "b", action("x")).edge("a", "c", action("y")).edge("a", "z").
		edge("b", "join").edge("c", "join").edge("join", "after")
	wf := f.build()
	c := s.setup(t, wf)

	res, err := run(t, c, wf, 5)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := json.Unmarshal(res, &got); err != nil {
		t.Fatalf("result %s: %v", res, err)
	}
	if want := map[string]int{"z": 15}; !reflect.DeepEqual(got, want) {
		t.Errorf("result = %v, want %v (only the terminal that ran)", got, want)
	}
	wantCounts(t, f, map[string]int{"b": 0, "c": 0, "join": 0, "after": 0, "z": 1})
}

func (s *suite) anyJoinConcurrentArrivals(t *testing.T) {
	// b, c and d finish together (they wait for each other); the any join must run once
	// per run, with one of their outputs.
	var mu sync.Mutex
	started := map[runtime.RunID]*sync.WaitGroup{}
	rendezvous := func(k int) runtime.ExecFunc {
		return func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
			mu.Lock()
			wg := started[t.Run]
			if wg == nil {
				wg = new(sync.WaitGroup)
				wg.Add(3)
				started[t.Run] = wg
			}
			mu.Unlock()
			wg.Done()
			wg.Wait()
			var in int
			if err := t.DecodeOutput("a", &in); err != nil {
				return runtime.Output{}, err
			}
			return runtime.Encode(in + k)
		}
	}
	f := newFlow("any").
		node("a", fromRun(add(0))).
		node("b", rendezvous(1)).
		node("c", rendezvous(2)).
		node("d", rendezvous(3)).
		node("first", fromArrived(mul(10)), join(runtime.JoinAny)).
		edge("a", "b").edge("a", "c").edge("a", "d").
		edge("b", "first").edge("c", "first").edge("d", "first")
	wf := f.build()
	c := s.setup(t, wf)

	const runs = 25
	for i := range runs {
		got := runInt(t, c, wf, 100)
		if got != 1010 && got != 1020 && got != 1030 {
			t.Fatalf("run %d: result = %d, want 10*(100+k) for k in 1..3", i, got)
		}
		if n := f.count("first"); n != i+1 {
			t.Fatalf("after %d runs the any join ran %d times", i+1, n)
		}
	}
	wantCounts(t, f, map[string]int{"b": runs, "c": runs, "d": runs, "first": runs})
}

func (s *suite) anyJoinAllSkipped(t *testing.T) {
	f := newFlow("any-skipped").
		node("start", fromRun(add(0))).
		node("a", routed("start", leftOrRight)).
		node("b", from("a", add(1))).
		node("c", from("a", add(2))).
		node("first", fromArrived(mul(10)), join(runtime.JoinAny)).
		node("other", from("a", add(7))).
		edge("start", "a").
		edge("a", "b", action("left")).edge("a", "c", action("left")).edge("a", "other", action("right")).
		edge("b", "first").edge("c", "first")
	wf := f.build()
	c := s.setup(t, wf)

	res, err := run(t, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(res) != `{"other":8}` {
		t.Errorf("result = %s, want {\"other\":8}", res)
	}
	wantCounts(t, f, map[string]int{"b": 0, "c": 0, "first": 0, "other": 1})
}

func (s *suite) actionRouting(t *testing.T) {
	classify := func(in int) runtime.Routed[int] {
		switch {
		case in > 10:
			return runtime.Route("big", in)
		case in < 0:
			return runtime.Route("negative", in)
		case in == 0:
			return runtime.Route("", in)
		}
		return runtime.Route("unknown", in) // no edge has it: the default edges are taken
	}
	f := newFlow("routing").
		node("start", fromRun(add(0))).
		node("a", routed("start", classify)).
		node("big", from("a", add(1000))).
		node("negative", from("a", mul(-1))).
		node("dflt1", from("a", add(1))).
		node("dflt2", from("a", add(2))).
		edge("start", "a").
		edge("a", "big", action("big")).edge("a", "negative", action("negative")).
		edge("a", "dflt1").edge("a", "dflt2")
	wf := f.build()
	c := s.setup(t, wf)

	for _, tc := range []struct {
		in   int
		want string
	}{
		{20, `{"big":1020}`},
		{-5, `{"negative":5}`},
		{5, `{"dflt1":6,"dflt2":7}`},
		{0, `{"dflt1":1,"dflt2":2}`},
	} {
		res, err := run(t, c, wf, tc.in)
		if err != nil {
			t.Fatalf("input %d: %v", tc.in, err)
		}
		if string(res) != tc.want {
			t.Errorf("input %d: result = %s, want %s", tc.in, res, tc.want)
		}
	}
	wantCounts(t, f, map[string]int{"big": 1, "negative": 1, "dflt1": 2, "dflt2": 2})
}

func (s *suite) edgeConditions(t *testing.T) {
	even := func(v int) bool { return v%2 == 0 }
	odd := func(v int) bool { return v%2 != 0 }
	f := newFlow("conditions").
		node("start", fromRun(add(0))).
		node("a", routed("start", func(in int) runtime.Routed[int] { return runtime.Route("go", in) })).
		node("even", from("a", add(100))).
		node("odd", from("a", add(200))).
		node("dflt", from("a", add(300))).
		node("big", from("start", mul(2))).
		edge("start", "a").edge("start", "big", when(func(v int) bool { return v > 10 })).
		// Conditions filter the edges of the matching action; the default edge is not
		// taken because an action matched, even when no condition holds.
		edge("a", "even", action("go"), when(even)).
		edge("a", "odd", action("go"), when(odd)).
		edge("a", "dflt")
	wf := f.build()
	c := s.setup(t, wf)

	for _, tc := range []struct {
		in   int
		want string
	}{
		{4, `{"even":104}`},
		{7, `{"odd":207}`},
		{12, `{"big":24,"even":112}`},
	} {
		res, err := run(t, c, wf, tc.in)
		if err != nil {
			t.Fatalf("input %d: %v", tc.in, err)
		}
		if string(res) != tc.want {
			t.Errorf("input %d: result = %s, want %s", tc.in, res, tc.want)
		}
	}
	wantCounts(t, f, map[string]int{"even": 2, "odd": 1, "dflt": 0, "big": 1})
}

func (s *suite) runResultAndStatus(t *testing.T) {
	f := newFlow("status").node("a", fromRun(add(1)))
	wf := f.build()
	c := s.setup(t, wf)
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1, runtime.WithMetadata(map[string]string{"k": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Await(ctx, c, id); err != nil {
		t.Fatal(err)
	}
	info, err := c.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != "completed" || string(info.Result) != "2" || info.Metadata["k"] != "v" || info.Err() != nil {
		t.Errorf("status = %+v, want completed with result 2 and metadata k=v", info)
	}
	if _, err := c.Status(ctx, "no-such-run"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Status(unknown run) = %v, want ErrNotFound", err)
	}
	if _, err := runtime.Await(ctx, c, "no-such-run"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Await(unknown run) = %v, want ErrNotFound", err)
	}
}

func (s *suite) startDelay(t *testing.T) {
	f := newFlow("delayed").node("a", fromRun(add(1)))
	wf := f.build()
	c := s.setup(t, wf)
	begin := time.Now()
	if got := runInt(t, c, wf, 1, runtime.WithDelay(100*time.Millisecond)); got != 2 {
		t.Errorf("result = %d, want 2", got)
	}
	if el := time.Since(begin); el < 90*time.Millisecond {
		t.Errorf("run finished after %v, before its 100ms start delay", el)
	}
}
