package backendtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
)

// Tests of failure handling: retries with backoff, Permanent, timeouts, fallbacks,
// failed runs and cancellation.

// flaky fails its first n attempts with err, then adds 1.
func flaky(n int, err error) runtime.ExecFunc {
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		if t.Attempt <= n {
			return runtime.Output{}, fmt.Errorf("attempt %d: %w", t.Attempt, err)
		}
		return from("a", add(1))(ctx, t)
	}
}

func (s *suite) retryWithBackoff(t *testing.T) {
	const base = 20 * time.Millisecond
	var mu sync.Mutex
	var seen []int // Task.Attempt of each execution
	var times []time.Time
	f := newFlow("retry")
	f.node("a", fromRun(add(0))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			mu.Lock()
			seen = append(seen, t.Attempt)
			times = append(times, time.Now())
			mu.Unlock()
			return flaky(2, errors.New("transient"))(ctx, t)
		}, attempts(3, base)).
		node("c", from("b", mul(2))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 4); got != 10 {
		t.Errorf("result = %d, want (4+1)*2", got)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 3, "c": 1})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[1 2 3]" {
		t.Errorf("attempts seen = %v, want [1 2 3]", seen)
	}
	// Backoff is base, then 2·base, each with ±20% jitter.
	if gap := times[1].Sub(times[0]); gap < base*8/10 {
		t.Errorf("second attempt %v after the first, want >= ~%v", gap, base)
	}
	if gap := times[2].Sub(times[1]); gap < 2*base*8/10 {
		t.Errorf("third attempt %v after the second, want >= ~%v", gap, 2*base)
	}
}

func (s *suite) retriesExhaustedFailsRun(t *testing.T) {
	f := newFlow("exhausted").
		node("a", fromRun(add(0))).
		node("b", flaky(100, errors.New("kaput")), attempts(3, time.Millisecond)).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	c := s.setup(t, wf)

	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runtime.Await(ctx, c, id)
	wantRunError(t, err, "b", "kaput", "3 attempt")
	if !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("error %q does not name node b", err)
	}
	wantCounts(t, f, map[string]int{"b": 3, "c": 0})
	info, err := c.Status(ctx, id)
	if err != nil || info.Status != "failed" || info.FailedNode != "b" {
		t.Errorf("status = %+v, %v; want failed at b", info, err)
	}
}

func (s *suite) permanentStopsRetrying(t *testing.T) {
	f := newFlow("permanent").
		node("a", func(context.Context, *runtime.Task) (runtime.Output, error) {
			return runtime.Output{}, runtime.Permanent(errors.New("invalid order"))
		}, attempts(5, time.Millisecond))
	wf := f.build()
	c := s.setup(t, wf)

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "a", "invalid order", "1 attempt")
	wantCounts(t, f, map[string]int{"a": 1})
}

func (s *suite) fallbackAfterRetries(t *testing.T) {
	var failure atomic.Pointer[runtime.Failure]
	var fallbackRuns atomic.Int32
	f := newFlow("fallback").
		node("a", fromRun(add(0))).
		node("b", flaky(100, errors.New("service down")), attempts(2, time.Millisecond),
			func(n *runtime.Node) {
				n.Fallback = "cached"
				// The fallback gets b's input and the failure.
				n.FallbackExec = from("a", func(ctx context.Context, in int) (int, error) {
					fallbackRuns.Add(1)
					failure.Store(runtime.FailureFrom(ctx))
					return in * 100, nil
				})
			}).
		node("cached", from("a", mul(100))).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	if len(wf.Start) != 1 || len(wf.Terminals) != 1 {
		t.Fatalf("start %v, terminals %v: the fallback-only node must be neither", wf.Start, wf.Terminals)
	}
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 3); got != 301 {
		t.Errorf("result = %d, want 3*100+1 (the fallback's output continues along b's edges)", got)
	}
	wantCounts(t, f, map[string]int{"b": 2, "c": 1, "cached": 0})
	if n := fallbackRuns.Load(); n != 1 {
		t.Errorf("fallback ran %d times, want 1", n)
	}
	fl := failure.Load()
	if fl == nil {
		t.Fatal("FailureFrom(ctx) = nil in the fallback")
	}
	if fl.Node != "b" || fl.Attempts != 2 || !strings.Contains(fl.Err, "service down") {
		t.Errorf("failure = %+v, want node b, 2 attempts, error service down", fl)
	}
	if runtime.FailureFrom(context.Background()) != nil {
		t.Error("FailureFrom outside a fallback is not nil")
	}
}

func (s *suite) fallbackFails(t *testing.T) {
	f := newFlow("fallback-fails").
		node("a", fromRun(add(0))).
		node("b", flaky(100, errors.New("primary down")), func(n *runtime.Node) {
			n.Fallback = "backup"
			n.FallbackExec = func(context.Context, *runtime.Task) (runtime.Output, error) {
				return runtime.Output{}, errors.New("backup down too")
			}
		}).
		node("backup", nil).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	c := s.setup(t, wf)

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "b", "primary down", "backup down too")
	wantCounts(t, f, map[string]int{"b": 1, "c": 0})
}

func (s *suite) timeout(t *testing.T) {
	var deadlineHit atomic.Int32
	// slow blocks until its ctx is done on attempt 1, and answers at once afterwards.
	slow := func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		if t.Attempt == 1 {
			<-ctx.Done()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				deadlineHit.Add(1)
			}
			return runtime.Output{}, ctx.Err()
		}
		return from("a", add(1))(ctx, t)
	}
	f := newFlow("timeout").
		node("a", fromRun(add(0))).
		node("b", slow, attempts(2, time.Millisecond), timeout(30*time.Millisecond)).
		edge("a", "b")
	wf := f.build()
	c := s.setup(t, wf)

	if got := runInt(t, c, wf, 1); got != 2 {
		t.Errorf("result = %d, want 2 (the second attempt succeeds)", got)
	}
	wantCounts(t, f, map[string]int{"b": 2})
	if deadlineHit.Load() != 1 {
		t.Errorf("the first attempt's ctx was not ended by its deadline")
	}

	t.Run("every attempt times out", func(t *testing.T) {
		f := newFlow("timeout-fail").
			node("a", func(ctx context.Context, _ *runtime.Task) (runtime.Output, error) {
				<-ctx.Done()
				return runtime.Output{}, ctx.Err()
			}, attempts(2, time.Millisecond), timeout(20*time.Millisecond))
		wf := f.build()
		c := s.setup(t, wf)
		_, err := run(t, c, wf, 1)
		wantRunError(t, err, "a", "deadline exceeded", "timed out after 20ms")
		wantCounts(t, f, map[string]int{"a": 2})
	})
}

func (s *suite) panicIsAFailedAttempt(t *testing.T) {
	f := newFlow("panic").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			if t.Attempt == 1 {
				panic("boom")
			}
			return fromRun(add(1))(ctx, t)
		}, attempts(2, time.Millisecond))
	wf := f.build()
	c := s.setup(t, wf)
	if got := runInt(t, c, wf, 1); got != 2 {
		t.Errorf("result = %d, want 2", got)
	}
	wantCounts(t, f, map[string]int{"a": 2})
}

func (s *suite) cancelRun(t *testing.T) {
	started := make(chan struct{}, 2)
	cancelled := make(chan error, 1) // the ctx error b saw
	release := make(chan struct{})   // lets the stubborn node finish
	stubbornDone := make(chan struct{})
	f := newFlow("cancel").
		node("a", fromRun(add(0))).
		// b respects its ctx.
		node("b", func(ctx context.Context, _ *runtime.Task) (runtime.Output, error) {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- ctx.Err()
			return runtime.Output{}, ctx.Err()
		}, attempts(3, time.Millisecond)).
		// s ignores its ctx and succeeds after the run was cancelled.
		node("s", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			defer close(stubbornDone)
			started <- struct{}{}
			<-release
			return from("a", add(1))(ctx, t)
		}).
		node("afterB", from("b", add(1))).
		node("afterS", from("s", add(1))).
		edge("a", "b").edge("a", "s").edge("b", "afterB").edge("s", "afterS")
	wf := f.build()
	c := s.setup(t, wf)

	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	<-started
	if err := c.CancelRun(ctx, id, "operator said so"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("b's ctx ended with %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("b's ctx was not cancelled")
	}
	_, err = runtime.Await(ctx, c, id)
	if !errors.Is(err, runtime.ErrRunCancelled) || errors.Is(err, runtime.ErrRunFailed) {
		t.Fatalf("Await = %v, want ErrRunCancelled", err)
	}
	var re *runtime.RunError
	if !errors.As(err, &re) || !re.Cancelled || re.Reason != "operator said so" {
		t.Errorf("err = %#v, want a cancelled *RunError with the reason", err)
	}

	close(release)
	<-stubbornDone
	// Give the worker time to record s (it must not) and start successors (it must not).
	time.Sleep(50 * time.Millisecond)
	wantCounts(t, f, map[string]int{"b": 1, "s": 1, "afterB": 0, "afterS": 0})
	info, err := c.Status(ctx, id)
	if err != nil || info.Status != "cancelled" {
		t.Errorf("status = %+v, %v; want cancelled", info, err)
	}
	if err := c.CancelRun(ctx, id, "again"); err != nil {
		t.Errorf("cancelling a cancelled run: %v", err)
	}
	if info, _ := c.Status(ctx, id); info.Reason != "operator said so" {
		t.Errorf("a second cancel changed the reason to %q", info.Reason)
	}
}

func (s *suite) conditionPanics(t *testing.T) {
	f := newFlow("cond-panic").
		node("a", fromRun(add(1))).
		node("b", from("a", add(1))).
		edge("a", "b", when(func(int) bool { panic("nil map in condition") }))
	wf := f.build()
	c := s.setup(t, wf)

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "a", "panic", "nil map in condition", "a -> b")
	wantCounts(t, f, map[string]int{"a": 1, "b": 0})
}

func (s *suite) fallbackOutputUnroutable(t *testing.T) {
	// b fails and its fallback answers, but routing the fallback's output fails (the
	// condition of b's edge panics): the run fails at b, naming the fallback, and the
	// fallback is not run again and again.
	var fallbackRuns atomic.Int32
	f := newFlow("fallback-unroutable").
		node("a", fromRun(add(0))).
		node("b", flaky(100, errors.New("primary down")), func(n *runtime.Node) {
			n.Fallback = "backup"
			n.FallbackExec = from("a", func(_ context.Context, in int) (int, error) {
				fallbackRuns.Add(1)
				return in, nil
			})
		}).
		node("backup", nil).
		node("c", from("b", add(1))).
		edge("a", "b").
		edge("b", "c", when(func(int) bool { panic("condition on the fallback's output") }))
	wf := f.build()
	c := s.setup(t, wf)

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "b", `fallback "backup"`, "condition on the fallback's output")
	time.Sleep(50 * time.Millisecond) // a fallback run again would show up
	if n := fallbackRuns.Load(); n != 1 {
		t.Errorf("the fallback ran %d times, want 1", n)
	}
	wantCounts(t, f, map[string]int{"b": 1, "c": 0})
}
