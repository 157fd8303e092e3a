package backendtest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Tests of exactly-once effects on at-least-once delivery: idempotent starts, reruns,
// jobs for other versions, duplicated jobs, lost acks and expired leases.

func (s *suite) withRunIDStartsOnce(t *testing.T) {
	f := newFlow("idempotent").
		node("a", fromRun(add(1))).
		node("b", from("a", add(1))).
		edge("a", "b")
	wf := f.build()
	c := s.setup(t, wf)
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

func (s *suite) rerunFrom(t *testing.T) {
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
	c := s.setup(t, wf)
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

func (s *suite) rerunFailedRun(t *testing.T) {
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
	c := s.setup(t, wf)
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

func (s *suite) rerunSubflow(t *testing.T) {
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
	c := s.setup(t, cwf, pwf)
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

func (s *suite) rerunWhileRunning(t *testing.T) {
	release := make(chan struct{})
	f := newFlow("rerun-running").
		node("a", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			<-release
			return fromRun(add(1))(ctx, t)
		})
	wf := f.build()
	c := s.setup(t, wf)
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

func (s *suite) unknownVersionIsReturnedToTheQueue(t *testing.T) {
	v1 := newFlow("versioned").node("a", fromRun(add(1)))
	v1.wf.Version = "v1"
	v2 := newFlow("versioned").node("a", fromRun(add(2)))
	v2.wf.Version = "v2"
	wf1, wf2 := v1.build(), v2.build()
	fb, c := s.faulty(t)
	logs, logger := recordLogs(t)
	stopV1 := s.startWorker(t, c, []*runtime.Workflow{wf1}, runtime.WithLogger(logger))
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
	s.startWorker(t, c, []*runtime.Workflow{wf2})
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "3" {
		t.Fatalf("Await = %s, %v; want 3 from the v2 worker", res, err)
	}
	wantCounts(t, v1, map[string]int{"a": 0})
	wantCounts(t, v2, map[string]int{"a": 1})
	if dl := fb.deadLetters(); len(dl) != 0 {
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

func (s *suite) duplicateJob(t *testing.T) {
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	f := blockingFlow("duplicate", started, release)
	wf := f.build()
	c := s.setup(t, wf)
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

func (s *suite) lostAck(t *testing.T) {
	// b's ack is lost once: its job comes back when its lease expires, and the worker
	// finds b complete and acks it without running b again.
	fb, c := s.faulty(t)
	var once atomic.Bool
	fb.set(func(f *faulty) {
		f.loseAck = func(j backend.Job) bool { return j.Node == "b" && once.CompareAndSwap(false, true) }
	})
	f := newFlow("lost-ack").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	lease := s.lease(300 * time.Millisecond)
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(lease))

	if got := runInt(t, c, wf, 1); got != 5 {
		t.Errorf("result = %d, want 5", got)
	}
	isB := func(j backend.Job) bool { return j.Node == "b" }
	eventually(t, "b's job to be delivered again", func() bool { return fb.deliveredWhere(isB) == 2 })
	time.Sleep(3 * lease) // acked this time: never delivered again
	if n := fb.deliveredWhere(isB); n != 2 {
		t.Errorf("b's job was delivered %d times, want 2 (the second delivery must be acked)", n)
	}
	if lost, _ := fb.stats(); lost != 1 {
		t.Fatalf("%d acks lost, want 1", lost)
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1, "c": 1})
}

func (s *suite) expiredLease(t *testing.T) {
	// b sleeps past its lease while its renewals are lost: the job is delivered again and
	// b runs twice, concurrently, but its completion counts once and c runs once.
	fb, c := s.faulty(t)
	fb.set(func(f *faulty) { f.loseExtend = isNode("b") })
	lease := s.lease(200 * time.Millisecond)
	f := newFlow("expired-lease").
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			if t.Attempt == 1 {
				time.Sleep(4 * lease)
			}
			return from("a", mul(2))(ctx, t)
		}, attempts(3, 0)).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(lease))

	if got := runInt(t, c, wf, 1); got != 5 {
		t.Errorf("result = %d, want 5", got)
	}
	time.Sleep(5 * lease) // the first, slow execution finishes too
	if n := f.count("b"); n < 2 {
		t.Errorf("b ran %d times; the expired lease should have redelivered it", n)
	}
	wantCounts(t, f, map[string]int{"a": 1, "c": 1})
}

func (s *suite) expiredLeaseCountsAsAnAttempt(t *testing.T) {
	// b has one attempt and outlives its lease (renewals lost), as if its worker had
	// died: the redelivery counts as a second attempt, so b is not run again and the
	// run fails at b.
	fb, c := s.faulty(t)
	fb.set(func(f *faulty) { f.loseExtend = isNode("b") })
	lease := s.lease(200 * time.Millisecond)
	f := newFlow("lease-attempts").
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			time.Sleep(3 * lease)
			return from("a", mul(2))(ctx, t)
		}).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLease(lease))

	_, err := run(t, c, wf, 1)
	wantRunError(t, err, "b", "lease expired", "2 attempt")
	time.Sleep(3 * lease) // the first execution finishes, and changes nothing
	wantCounts(t, f, map[string]int{"b": 1, "c": 0})
}

func (s *suite) workerDiesMidNode(t *testing.T) {
	// Worker A takes b and stops renewing its lease, as if it had died in the middle of
	// the node; worker B takes the job over when the lease expires and the run
	// completes once. When A's b returns at last, its completion loses.
	b, _ := s.open(t)
	dying := &faulty{Backend: b, loseExtend: isNode("b")}
	healthy := runtime.New(b)
	lease := s.lease(200 * time.Millisecond)
	release := make(chan struct{})
	var onA atomic.Int32
	f := newFlow("dies-mid-node").
		node("a", fromRun(add(1))).
		node("b", func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			if t.Attempt == 1 {
				onA.Add(1)
				<-release // the dead worker never finishes in time
			}
			return from("a", mul(2))(ctx, t)
		}, attempts(3, 0)).
		node("c", from("b", add(1))).
		edge("a", "b").edge("b", "c")
	wf := f.build()
	ctx := ctxT(t)
	// A alone takes a's and b's jobs, and with one slot nothing more while it holds b; B
	// starts then.
	stopA := s.startWorker(t, runtime.New(dying), []*runtime.Workflow{wf}, runtime.WithLease(lease), runtime.WithConcurrency(1))
	id, err := runtime.Start(ctx, healthy, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "worker A to run b", func() bool { return onA.Load() == 1 })
	s.startWorker(t, healthy, []*runtime.Workflow{wf}, runtime.WithLease(lease))
	res, err := runtime.Await(ctx, healthy, id)
	if err != nil || string(res) != "5" {
		t.Fatalf("Await = %s, %v; want (1+1)*2+1", res, err)
	}
	close(release)
	stopA() // A's b finishes now, and finds b complete
	wantCounts(t, f, map[string]int{"a": 1, "b": 2, "c": 1})
	wantStatus(t, healthy, id, "completed")
}

func (s *suite) poisonMessage(t *testing.T) {
	// Three poison jobs sit in the queue beside a healthy run: one names a node
	// instance that cannot be decoded, one a node its workflow does not have, and one
	// fails every time it is handled (its run's state cannot be read). The first two are
	// moved aside at once, the third after maxDeliveries deliveries, each with a log
	// line; none is delivered again, and the healthy run is not affected.
	const maxDeliveries = 3
	fb, c := s.faulty(t)
	broken := errors.New("corrupt state")
	fb.set(func(f *faulty) {
		f.failRead = func(run string) error {
			if run == "poison-run" {
				return broken
			}
			return nil
		}
	})
	f := newFlow("healthy").
		node("a", fromRun(add(1))).
		node("b", from("a", mul(2))).
		edge("a", "b")
	wf := f.build()
	logs, logger := recordLogs(t)
	lease := s.lease(300 * time.Millisecond)
	s.startWorker(t, c, []*runtime.Workflow{wf}, runtime.WithLogger(logger),
		runtime.WithMaxDeliveries(maxDeliveries), runtime.WithLease(lease))
	ctx := ctxT(t)

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	poison := []backend.Job{
		{ID: "poison-undecodable", Run: string(id), Workflow: wf.ID, Kind: backend.Exec, Node: "a@x#", Attempt: 1},
		{ID: "poison-unknown-node", Run: string(id), Workflow: wf.ID, Kind: backend.Exec, Node: "no-such-node", Attempt: 1},
		{ID: "poison-failing", Run: "poison-run", Workflow: wf.ID, Kind: backend.Exec, Node: "a", Attempt: 1},
	}
	if err := c.Backend().Enqueue(ctx, poison...); err != nil {
		t.Fatal(err)
	}
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "4" {
		t.Fatalf("the healthy run: %s, %v; want (1+1)*2", res, err)
	}
	eventually(t, "the poison jobs to be dead-lettered", func() bool { return len(fb.deadLetters()) == len(poison) })
	time.Sleep(3 * lease) // a job still in the queue would be delivered again
	want := map[string]struct {
		deliveries int
		reason     string
	}{
		"poison-undecodable":  {1, "bad node instance"},
		"poison-unknown-node": {1, "no node"},
		"poison-failing":      {maxDeliveries, broken.Error()},
	}
	for _, d := range fb.deadLetters() {
		w, ok := want[d.job.ID]
		if !ok {
			t.Errorf("job %s (%+v) was dead-lettered", d.job.ID, d.job)
			continue
		}
		if !strings.Contains(d.reason, w.reason) {
			t.Errorf("job %s dead-lettered with reason %q, want it to contain %q", d.job.ID, d.reason, w.reason)
		}
		if n := fb.deliveredWhere(func(j backend.Job) bool { return j.ID == d.job.ID }); n != w.deliveries {
			t.Errorf("job %s was delivered %d times, want %d", d.job.ID, n, w.deliveries)
		}
		if logs.count("dead-letter", d.job.ID) == 0 {
			t.Errorf("no log line says that job %s was dead-lettered", d.job.ID)
		}
	}
	wantCounts(t, f, map[string]int{"a": 1, "b": 1})
	wantStatus(t, c, id, "completed")
}

func (s *suite) oversizedOutput(t *testing.T) {
	// A node's output is larger than the backend stores: the backend stores it by
	// reference and the run completes with it whole, or the run fails at once, naming
	// the node and saying why. Never a truncated output, never a run stuck redelivering.
	limit := s.cfg.MaxValueSize
	if limit <= 0 {
		t.Skip("Config.MaxValueSize is 0: the backend stores values of any size")
	}
	big := strings.Repeat("x", limit+1)
	f := newFlow("oversized").
		node("a", fromRun(add(1))).
		node("big", func(context.Context, *runtime.Task) (runtime.Output, error) {
			return runtime.Encode(big)
		}, attempts(3, time.Millisecond)).
		node("after", func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
			var v string
			if err := t.DecodeOutput("big", &v); err != nil {
				return runtime.Output{}, err
			}
			return runtime.Encode(len(v))
		}).
		edge("a", "big").edge("big", "after")
	wf := f.build()
	c := s.setup(t, wf)

	res, err := run(t, c, wf, 1)
	switch {
	case err == nil:
		if n := decodeInt(t, res); n != len(big) {
			t.Errorf("the successor got %d bytes of the %d-byte output", n, len(big))
		}
	default:
		wantRunError(t, err, "big", "output of", backend.ErrTooLarge.Error())
		wantCounts(t, f, map[string]int{"big": 1, "after": 0})
	}

	// A run input larger than the limit is refused by Start, or kept whole.
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, newFlow("echo").node("a", fromRun(add(0))).build(), big)
	if err != nil {
		if !errors.Is(err, backend.ErrTooLarge) {
			t.Errorf("Start with an input of %d bytes: %v, want an error wrapping backend.ErrTooLarge", len(big), err)
		}
		return
	}
	r, _, err := c.Backend().Read(ctx, string(id))
	if err != nil || len(r.Input) != len(big)+2 {
		t.Errorf("the run's input has %d bytes, want %d (err %v)", len(r.Input), len(big)+2, err)
	}
}
