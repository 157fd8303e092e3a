package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// primitiveTests are the cases of the primitive tier: the backend.Backend contract,
// directly.
func primitiveTests() []test {
	return []test{
		{"EnqueueDequeue", (*suite).enqueueDequeue},
		{"DequeueWaits", (*suite).dequeueWaits},
		{"LeaseExpiry", (*suite).leaseExpiry},
		{"ExtendKeepsLease", (*suite).extendKeepsLease},
		{"Requeue", (*suite).requeue},
		{"DelayedJobs", (*suite).delayedJobs},
		{"PriorityOrder", (*suite).priorityOrder},
		{"DeadLetter", (*suite).deadLetter},
		{"CreateRun", (*suite).createRun},
		{"UnknownRun", (*suite).unknownRun},
		{"TxSemantics", (*suite).txSemantics},
		{"BinaryValuesAndKeys", (*suite).binaryValuesAndKeys},
		{"RunStatusAndUpdated", (*suite).runStatusAndUpdated},
		{"UpdateAtomicity", (*suite).updateAtomicity},
		{"ConcurrentClaims", (*suite).concurrentClaims},
		{"ConcurrentIncr", (*suite).concurrentIncr},
		{"JoinArrivals", (*suite).joinArrivals},
		{"RunsAreIsolated", (*suite).runsAreIsolated},
		{"ListRuns", (*suite).listRuns},
		{"ListStalledRuns", (*suite).listStalledRuns},
		{"WaitRun", (*suite).waitRun},
		{"ExpireRuns", (*suite).expireRuns},
		{"ValueSizeLimit", (*suite).valueSizeLimit},
		{"DurableReopen", (*suite).durableReopen},
	}
}

// job is a job of run "r" with every field set.
func job(id string, prio int) backend.Job {
	return backend.Job{ID: id, Run: "r", Workflow: "wf", Version: "v1", Kind: backend.Exec,
		Node: "n@1#2", From: "p@1", Attempt: 1, Priority: prio, Err: "e"}
}

func ids(ds []*backend.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Job.ID
	}
	return out
}

// take dequeues until it holds n jobs or within has passed (a queue may return fewer
// jobs than asked for).
func take(t *testing.T, q backend.Queue, n int, lease, within time.Duration) []*backend.Delivery {
	t.Helper()
	ctx := ctxT(t)
	var out []*backend.Delivery
	deadline := time.Now().Add(within)
	for len(out) < n {
		wait := time.Until(deadline)
		if wait < 0 {
			break
		}
		ds, err := q.Dequeue(ctx, n-len(out), lease, wait)
		if err != nil {
			t.Fatalf("Dequeue: %v", err)
		}
		if len(ds) > n-len(out) {
			t.Fatalf("Dequeue(max %d) returned %d jobs", n-len(out), len(ds))
		}
		out = append(out, ds...)
	}
	return out
}

// none checks that no job is delivered within wait.
func none(t *testing.T, q backend.Queue, wait time.Duration, why string) {
	t.Helper()
	ds, err := q.Dequeue(ctxT(t), 10, time.Minute, wait)
	if err != nil {
		t.Fatalf("Dequeue: %v", err)
	}
	if len(ds) > 0 {
		t.Fatalf("Dequeue delivered %v; want nothing: %s", ids(ds), why)
	}
}

// createRun creates a running run with id and no state.
func createRun(t *testing.T, st backend.Store, id string) *backend.Run {
	t.Helper()
	now := time.Now()
	r := &backend.Run{ID: id, Workflow: "wf", Version: "v1", Status: backend.Running, Created: now, Updated: now}
	created, err := st.CreateRun(ctxT(t), r, func(backend.Tx) error { return nil })
	if err != nil || !created {
		t.Fatalf("CreateRun(%s) = %v, %v", id, created, err)
	}
	return r
}

// update runs fn in a transition of run id, failing the test on an error.
func update(t *testing.T, st backend.Store, id string, fn func(tx backend.Tx) error) {
	t.Helper()
	if err := st.Update(ctxT(t), id, fn); err != nil {
		t.Fatalf("Update(%s): %v", id, err)
	}
}

// read returns the run and the values of keys, failing the test on an error.
func read(t *testing.T, st backend.Store, id string, keys ...string) (*backend.Run, map[string][]byte) {
	t.Helper()
	r, vals, err := st.Read(ctxT(t), id, keys...)
	if err != nil {
		t.Fatalf("Read(%s): %v", id, err)
	}
	return r, vals
}

func (s *suite) enqueueDequeue(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	want := []backend.Job{job("a", 0), job("b", 0), job("c", 0)}
	want[1].Kind, want[1].Attempt, want[1].From, want[1].Err = backend.Fallback, 3, "", ""
	want[2].Kind, want[2].Workflow, want[2].Version = backend.ChildDone, "", ""
	if err := b.Enqueue(ctx, want...); err != nil {
		t.Fatal(err)
	}
	ds := take(t, b, 3, time.Minute, 5*time.Second)
	if len(ds) != 3 {
		t.Fatalf("dequeued %v, want the 3 jobs", ids(ds))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Job.ID < ds[j].Job.ID })
	for i, d := range ds {
		if d.Job != want[i] {
			t.Errorf("dequeued %+v, want %+v", d.Job, want[i])
		}
		if d.Deliveries != 1 {
			t.Errorf("job %s: Deliveries = %d on its first delivery, want 1", d.Job.ID, d.Deliveries)
		}
	}
	none(t, b, 50*time.Millisecond, "every job is leased")
	if err := b.Ack(ctx, ds[0], ds[1]); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, ds[2]); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx); err != nil {
		t.Errorf("Enqueue of no jobs: %v", err)
	}
	if err := b.Ack(ctx); err != nil {
		t.Errorf("Ack of no deliveries: %v", err)
	}

	// Acked jobs are gone for good, also once their leases would have expired.
	lease := s.lease(300 * time.Millisecond)
	if err := b.Enqueue(ctx, job("d", 0)); err != nil {
		t.Fatal(err)
	}
	ds = take(t, b, 1, lease, 5*time.Second)
	if len(ds) != 1 {
		t.Fatal("the job was not delivered")
	}
	if err := b.Ack(ctx, ds...); err != nil {
		t.Fatal(err)
	}
	none(t, b, 4*lease, "the job was acked")

	// Dequeue leases at most max jobs.
	for i := range 5 {
		if err := b.Enqueue(ctx, job(fmt.Sprint("m", i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	if ds, err := b.Dequeue(ctx, 2, time.Minute, time.Second); err != nil || len(ds) == 0 || len(ds) > 2 {
		t.Fatalf("Dequeue(max 2) = %v, %v; want one or two jobs", ids(ds), err)
	}
}

func (s *suite) dequeueWaits(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	begin := time.Now()
	ds, err := b.Dequeue(ctx, 1, time.Minute, 100*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Fatalf("Dequeue on an empty queue = %v, %v; want nothing, no error", ids(ds), err)
	}
	if el := time.Since(begin); el > 5*time.Second {
		t.Errorf("Dequeue with a wait of 100ms took %v", el)
	}

	// A job enqueued while Dequeue waits is delivered before the wait ends.
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = b.Enqueue(context.Background(), job("late", 0))
	}()
	begin = time.Now()
	ds = take(t, b, 1, time.Minute, 10*time.Second)
	if len(ds) != 1 || ds[0].Job.ID != "late" {
		t.Fatalf("dequeued %v, want the job enqueued while waiting", ids(ds))
	}
	if el := time.Since(begin); el > 5*time.Second {
		t.Errorf("the job came %v after Dequeue began waiting; want it soon after it was enqueued", el)
	}

	// A waiting Dequeue returns when its ctx ends.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	begin = time.Now()
	ds, _ = b.Dequeue(cctx, 1, time.Minute, time.Minute)
	if len(ds) != 0 {
		t.Errorf("Dequeue delivered %v from an empty queue", ids(ds))
	}
	if el := time.Since(begin); el > 5*time.Second {
		t.Errorf("Dequeue returned %v after its ctx ended", el)
	}
}

func (s *suite) leaseExpiry(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	lease := s.lease(300 * time.Millisecond)
	if err := b.Enqueue(ctx, job("j", 0)); err != nil {
		t.Fatal(err)
	}
	first := take(t, b, 1, lease, 5*time.Second)
	if len(first) != 1 {
		t.Fatal("the job was not delivered")
	}
	leased := time.Now()
	none(t, b, 0, "the job is leased")
	second := take(t, b, 1, time.Minute, 10*lease+5*time.Second)
	if len(second) != 1 || second[0].Job.ID != "j" {
		t.Fatalf("after the lease expired: dequeued %v, want the job again", ids(second))
	}
	if el := time.Since(leased); el < lease*8/10 {
		t.Errorf("the job was delivered again %v after it was leased for %v", el, lease)
	}
	if second[0].Deliveries != 2 {
		t.Errorf("Deliveries = %d on the second delivery, want 2", second[0].Deliveries)
	}
	if second[0].Job != first[0].Job {
		t.Errorf("the job changed between deliveries: %+v then %+v", first[0].Job, second[0].Job)
	}
	if err := b.Ack(ctx, second...); err != nil {
		t.Fatal(err)
	}
	none(t, b, 3*lease, "the second delivery was acked")
}

func (s *suite) extendKeepsLease(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	lease := s.lease(400 * time.Millisecond)
	if err := b.Enqueue(ctx, job("j", 0)); err != nil {
		t.Fatal(err)
	}
	ds := take(t, b, 1, lease, 5*time.Second)
	if len(ds) != 1 {
		t.Fatal("the job was not delivered")
	}
	until := time.Now().Add(3 * lease)
	for time.Now().Before(until) {
		time.Sleep(lease / 4)
		if err := b.Extend(ctx, lease, ds...); err != nil {
			t.Fatal(err)
		}
		if again, err := b.Dequeue(ctx, 1, time.Minute, 0); err != nil || len(again) != 0 {
			t.Fatalf("while its lease is renewed the job was delivered again: %v, %v", ids(again), err)
		}
	}
	// Renewals stop: the job comes back.
	again := take(t, b, 1, time.Minute, 10*lease+5*time.Second)
	if len(again) != 1 || again[0].Deliveries != 2 {
		t.Fatalf("after renewals stopped: dequeued %v, want the job's second delivery", ids(again))
	}
}

func (s *suite) requeue(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	lease := s.lease(300 * time.Millisecond)
	if err := b.Enqueue(ctx, job("j", 0)); err != nil {
		t.Fatal(err)
	}
	ds := take(t, b, 1, lease, 5*time.Second)
	if len(ds) != 1 {
		t.Fatal("the job was not delivered")
	}
	next := job("j2", 0)
	next.Attempt = 2
	if err := b.Requeue(ctx, ds[0], next); err != nil {
		t.Fatal(err)
	}
	got := take(t, b, 1, time.Minute, 5*time.Second)
	if len(got) != 1 || got[0].Job != next || got[0].Deliveries != 1 {
		t.Fatalf("after Requeue: dequeued %+v, want the next job, first delivery", got)
	}
	// The replaced job is gone: it does not come back when its lease would expire.
	none(t, b, 3*lease, "the requeued job was replaced")

	// A postponed job becomes visible at its time.
	later := job("j3", 0)
	later.NotBefore = time.Now().Add(3 * lease)
	if err := b.Requeue(ctx, got[0], later); err != nil {
		t.Fatal(err)
	}
	none(t, b, 0, "the next job is postponed")
	got = take(t, b, 1, time.Minute, 10*lease+5*time.Second)
	if len(got) != 1 || got[0].Job.ID != "j3" {
		t.Fatalf("dequeued %v, want the postponed job", ids(got))
	}
	if early := time.Until(later.NotBefore); early > 20*time.Millisecond {
		t.Errorf("the postponed job was delivered %v before its time", early)
	}
}

func (s *suite) delayedJobs(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	delay := s.lease(300 * time.Millisecond)
	later := job("later", 9) // a higher priority does not make it visible sooner
	later.NotBefore = time.Now().Add(delay)
	past := job("past", 0)
	past.NotBefore = time.Now().Add(-time.Hour)
	if err := b.Enqueue(ctx, later, job("now", 0), past); err != nil {
		t.Fatal(err)
	}
	ds := take(t, b, 2, time.Minute, 5*time.Second)
	if got := ids(ds); len(got) != 2 || slices.Contains(got, "later") {
		t.Fatalf("dequeued %v, want the jobs due now (now, past), not the delayed one", got)
	}
	none(t, b, 0, "the delayed job is not due")
	ds = take(t, b, 1, time.Minute, delay+5*time.Second)
	if len(ds) != 1 || ds[0].Job.ID != "later" {
		t.Fatalf("dequeued %v, want the delayed job", ids(ds))
	}
	if early := time.Until(later.NotBefore); early > 20*time.Millisecond {
		t.Errorf("the delayed job was delivered %v before its time", early)
	}
	if !ds[0].Job.NotBefore.IsZero() && ds[0].Job.NotBefore.Sub(later.NotBefore).Abs() > time.Millisecond {
		t.Errorf("NotBefore came back as %v, want %v", ds[0].Job.NotBefore, later.NotBefore)
	}
}

func (s *suite) priorityOrder(t *testing.T) {
	if s.cfg.Unordered {
		t.Skip("Config.Unordered: the queue delivers in no particular order")
	}
	b, _ := s.open(t)
	ctx := ctxT(t)
	for _, j := range []backend.Job{job("low1", 0), job("neg", -3), job("high", 5), job("low2", 0), job("mid", 2), job("low3", 0)} {
		if err := b.Enqueue(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for range 6 {
		ds := take(t, b, 1, time.Minute, 5*time.Second)
		got = append(got, ids(ds)...)
	}
	if want := []string{"high", "mid", "low1", "low2", "low3", "neg"}; !slices.Equal(got, want) {
		t.Fatalf("dequeued %v, want %v (higher priority first, first in first out among equals)", got, want)
	}
	// A batch Dequeue keeps the order too.
	for _, j := range []backend.Job{job("b1", 1), job("b2", 1), job("b3", 7)} {
		if err := b.Enqueue(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	ds := take(t, b, 3, time.Minute, 5*time.Second)
	if got, want := ids(ds), []string{"b3", "b1", "b2"}; !slices.Equal(got, want) {
		t.Fatalf("dequeued %v at once, want %v", got, want)
	}
}

func (s *suite) deadLetter(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	lease := s.lease(300 * time.Millisecond)
	if err := b.Enqueue(ctx, job("poison", 0), job("fine", 0)); err != nil {
		t.Fatal(err)
	}
	ds := take(t, b, 2, lease, 5*time.Second)
	if len(ds) != 2 {
		t.Fatalf("dequeued %v, want both jobs", ids(ds))
	}
	for _, d := range ds {
		if d.Job.ID == "poison" {
			if err := b.DeadLetter(ctx, d, "cannot be decoded"); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The other job's lease expires and it comes back; the dead letter never does.
	again := take(t, b, 1, time.Minute, 10*lease+5*time.Second)
	if got := ids(again); len(got) != 1 || got[0] != "fine" {
		t.Fatalf("after the leases expired: dequeued %v, want the job that was not dead-lettered", got)
	}
	none(t, b, 3*lease, "the other job was dead-lettered")
}

func (s *suite) createRun(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	created := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	want := backend.Run{
		ID: "run-1", Workflow: "order", Version: "v2", Status: backend.Running, Priority: 3,
		Input: []byte(`{"id":"o-1"}`), Parent: "parent-run", ParentNode: "sub@2",
		Metadata: map[string]string{"tenant": "acme", "empty": ""},
		Created:  created, Updated: created,
	}
	r := want
	ok, err := b.CreateRun(ctx, &r, func(tx backend.Tx) error {
		if tx.Run().ID != "run-1" || tx.Run().Status != backend.Running {
			t.Errorf("init sees the run %+v", tx.Run())
		}
		if _, err := tx.Incr("open", 2); err != nil {
			return err
		}
		tx.Enqueue(job("start", 0))
		return tx.Put("k", []byte("v"))
	})
	if err != nil || !ok {
		t.Fatalf("CreateRun = %v, %v; want created", ok, err)
	}
	got, vals := read(t, b, "run-1", "k", "open", "absent")
	if got.ID != want.ID || got.Workflow != want.Workflow || got.Version != want.Version ||
		got.Status != want.Status || got.Priority != want.Priority || string(got.Input) != string(want.Input) ||
		got.Parent != want.Parent || got.ParentNode != want.ParentNode || len(got.Result) != 0 ||
		got.FailedNode != "" || got.Reason != "" {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	if len(got.Metadata) != 2 || got.Metadata["tenant"] != "acme" {
		t.Errorf("metadata = %v, want %v", got.Metadata, want.Metadata)
	}
	if got.Created.Sub(created).Abs() > time.Millisecond {
		t.Errorf("Created = %v, want %v", got.Created, created)
	}
	if string(vals["k"]) != "v" || string(vals["open"]) != "2" || len(vals) != 2 {
		t.Errorf("values = %q, want k=v open=2 (absent keys left out)", vals)
	}
	if ds := take(t, b, 1, time.Minute, 5*time.Second); len(ds) != 1 || ds[0].Job.ID != "start" {
		t.Fatalf("dequeued %v, want the job enqueued by CreateRun's init", ids(ds))
	}

	// A second CreateRun with the same id changes nothing.
	dup := want
	dup.Workflow, dup.Input = "other", []byte(`{}`)
	ok, err = b.CreateRun(ctx, &dup, func(tx backend.Tx) error {
		tx.Enqueue(job("dup-start", 0))
		return tx.Put("k", []byte("dup"))
	})
	if err != nil || ok {
		t.Fatalf("second CreateRun = %v, %v; want not created, no error", ok, err)
	}
	got, vals = read(t, b, "run-1", "k")
	if got.Workflow != "order" || string(got.Input) != string(want.Input) || string(vals["k"]) != "v" {
		t.Errorf("a duplicate CreateRun changed the run: %+v %q", got, vals)
	}
	none(t, b, 50*time.Millisecond, "a duplicate CreateRun enqueues nothing")

	// An init that fails creates nothing, and the id stays free.
	boom := errors.New("boom")
	failed := want
	failed.ID = "run-2"
	ok, err = b.CreateRun(ctx, &failed, func(tx backend.Tx) error {
		tx.Enqueue(job("lost", 0))
		_ = tx.Put("k", []byte("v"))
		return boom
	})
	if !errors.Is(err, boom) || ok {
		t.Fatalf("CreateRun with a failing init = %v, %v; want its error", ok, err)
	}
	if _, _, err := b.Read(ctx, "run-2"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Read of a run whose creation failed = %v, want ErrNotFound", err)
	}
	none(t, b, 50*time.Millisecond, "a failed CreateRun enqueues nothing")
	createRun(t, b, "run-2")
}

func (s *suite) unknownRun(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	if _, _, err := b.Read(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Read of an unknown run = %v, want ErrNotFound", err)
	}
	called := false
	err := b.Update(ctx, "nope", func(backend.Tx) error { called = true; return nil })
	if !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Update of an unknown run = %v, want ErrNotFound", err)
	}
	if called {
		t.Error("Update called fn for an unknown run")
	}
	if w, ok := b.(backend.Waiter); ok {
		if _, err := w.WaitRun(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("WaitRun of an unknown run = %v, want ErrNotFound", err)
		}
	}
}

func (s *suite) txSemantics(t *testing.T) {
	b, _ := s.open(t)
	createRun(t, b, "r")
	update(t, b, "r", func(tx backend.Tx) error {
		check := func(what string, ok bool) {
			if !ok {
				t.Errorf("in one transition: %s", what)
			}
		}
		v, err := tx.Get("absent", "also-absent")
		check("Get of absent keys returns nils", err == nil && len(v) == 2 && v[0] == nil && v[1] == nil)
		stored, err := tx.PutIfAbsent("claim", []byte("first"))
		check("PutIfAbsent of an absent key stores", err == nil && stored)
		stored, err = tx.PutIfAbsent("claim", []byte("second"))
		check("PutIfAbsent of a key written in the same transition does not store", err == nil && !stored)
		v, _ = tx.Get("claim")
		check("Get reads the transition's own writes", string(v[0]) == "first")
		stored, _ = tx.PutIfAbsent("empty", nil)
		v, _ = tx.Get("empty")
		check("an empty value is stored and reads as present (non-nil)", stored && v[0] != nil && len(v[0]) == 0)
		stored, _ = tx.PutIfAbsent("empty", []byte("x"))
		check("PutIfAbsent does not overwrite an empty value", !stored)
		check("Put stores", tx.Put("p", []byte("1")) == nil)
		check("Put overwrites", tx.Put("p", []byte("2")) == nil)
		n, err := tx.Incr("n", 5)
		check("Incr of an absent key starts at 0", err == nil && n == 5)
		n, _ = tx.Incr("n", -7)
		check("Incr adds a negative delta", n == -2)
		n, _ = tx.Incr("n", 0)
		check("Incr by 0 reads", n == -2)
		n, _ = tx.Incr("zero", 0)
		check("Incr by 0 of an absent key is 0", n == 0)
		check("Put then Delete", tx.Put("gone", []byte("x")) == nil && tx.Delete("gone", "never-was") == nil)
		v, _ = tx.Get("p", "gone", "claim")
		check("Get returns values in the order of its keys", string(v[0]) == "2" && v[1] == nil && string(v[2]) == "first")
		return nil
	})
	_, vals := read(t, b, "r", "claim", "empty", "p", "n", "gone", "absent")
	want := map[string]string{"claim": "first", "empty": "", "p": "2", "n": "-2"}
	if len(vals) != len(want) {
		t.Errorf("Read = %q, want %q", vals, want)
	}
	for k, w := range want {
		if v, ok := vals[k]; !ok || string(v) != w {
			t.Errorf("Read: %s = %q (present %v), want %q", k, v, ok, w)
		}
	}
	// A later transition sees the committed state.
	update(t, b, "r", func(tx backend.Tx) error {
		if stored, _ := tx.PutIfAbsent("claim", []byte("late")); stored {
			t.Error("PutIfAbsent of a committed key stored")
		}
		if n, _ := tx.Incr("n", 3); n != 1 {
			t.Errorf("Incr of a committed counter -2 by 3 = %d, want 1", n)
		}
		return tx.Delete("p")
	})
	if _, vals := read(t, b, "r", "p", "n"); vals["p"] != nil || string(vals["n"]) != "1" {
		t.Errorf("after the second transition: %q, want p deleted and n=1", vals)
	}
}

func (s *suite) binaryValuesAndKeys(t *testing.T) {
	// Completion records are binary; keys hold node ids, loop scopes and batch items.
	b, _ := s.open(t)
	createRun(t, b, "r")
	bin := make([]byte, 512)
	for i := range bin {
		bin[i] = byte(i)
	}
	keys := []string{"n|a", "a|join|pred", "n|node@1.0", "n|scatter@4#0", "c|check-order_2", "x|nœud ünïcode",
		"k|" + strings.Repeat("long", 50), "has space", "quote'\"`\\", "percent%_*"}
	update(t, b, "r", func(tx backend.Tx) error {
		for i, k := range keys {
			if err := tx.Put(k, append([]byte{byte(i)}, bin...)); err != nil {
				return err
			}
		}
		return nil
	})
	_, vals := read(t, b, "r", keys...)
	for i, k := range keys {
		if !bytes.Equal(vals[k], append([]byte{byte(i)}, bin...)) {
			t.Errorf("value of key %q did not round-trip (%d bytes back)", k, len(vals[k]))
		}
	}
	// Keys are exact: no prefix or pattern matching.
	if _, vals := read(t, b, "r", "n|", "n|%", "n|_", "n|*", "N|A"); len(vals) != 0 {
		t.Errorf("Read of keys never written returned %q", vals)
	}
}

func (s *suite) runStatusAndUpdated(t *testing.T) {
	b, _ := s.open(t)
	r := createRun(t, b, "r")
	before, _ := read(t, b, "r")
	if before.Updated.Before(r.Created.Add(-time.Second)) {
		t.Errorf("Updated = %v, before the run was created (%v)", before.Updated, r.Created)
	}
	time.Sleep(20 * time.Millisecond)
	update(t, b, "r", func(tx backend.Tx) error {
		run := tx.Run()
		run.Status, run.Result, run.FailedNode, run.Reason = backend.Failed, []byte(`{"x":1}`), "charge", "card declined"
		return nil
	})
	after, _ := read(t, b, "r")
	if after.Status != backend.Failed || string(after.Result) != `{"x":1}` || after.FailedNode != "charge" || after.Reason != "card declined" {
		t.Errorf("after the transition: %+v", after)
	}
	if !after.Updated.After(before.Updated) {
		t.Errorf("Updated did not advance with a transition: %v then %v", before.Updated, after.Updated)
	}
	if !after.Created.Equal(before.Created) {
		t.Errorf("Created changed with a transition: %v then %v", before.Created, after.Created)
	}
	// A final run can run again (a rerun), and its status be read back.
	update(t, b, "r", func(tx backend.Tx) error {
		run := tx.Run()
		run.Status, run.Result, run.FailedNode, run.Reason = backend.Running, nil, "", ""
		return nil
	})
	again, _ := read(t, b, "r")
	if again.Status != backend.Running || len(again.Result) != 0 || again.FailedNode != "" || again.Reason != "" {
		t.Errorf("after a rerun: %+v", again)
	}
	for _, st := range []backend.Status{backend.Completed, backend.Cancelled} {
		update(t, b, "r", func(tx backend.Tx) error { tx.Run().Status = st; return nil })
		if got, _ := read(t, b, "r"); got.Status != st {
			t.Errorf("status = %s, want %s", got.Status, st)
		}
	}
}

func (s *suite) updateAtomicity(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	createRun(t, b, "r")
	update(t, b, "r", func(tx backend.Tx) error {
		_, err := tx.Incr("n", 1)
		return err
	})
	before, _ := read(t, b, "r")
	time.Sleep(10 * time.Millisecond)
	boom := errors.New("boom")
	err := b.Update(ctx, "r", func(tx backend.Tx) error {
		_ = tx.Put("k", []byte("v"))
		_, _ = tx.PutIfAbsent("claim", []byte("x"))
		_, _ = tx.Incr("n", 10)
		_ = tx.Delete("n")
		tx.Enqueue(job("lost", 0))
		tx.Run().Status = backend.Failed
		tx.Run().Reason = "should not stick"
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	after, vals := read(t, b, "r", "k", "claim", "n")
	if after.Status != backend.Running || after.Reason != "" || !after.Updated.Equal(before.Updated) {
		t.Errorf("a failed transition changed the run: %+v, was %+v", after, before)
	}
	if len(vals) != 1 || string(vals["n"]) != "1" {
		t.Errorf("a failed transition changed the state: %q, want only n=1", vals)
	}
	none(t, b, 100*time.Millisecond, "a failed transition enqueues nothing")

	// The jobs of a transition that commits are enqueued.
	update(t, b, "r", func(tx backend.Tx) error {
		tx.Enqueue(job("kept1", 0), job("kept2", 0))
		tx.Enqueue(job("kept3", 0))
		return nil
	})
	if ds := take(t, b, 3, time.Minute, 5*time.Second); len(ds) != 3 {
		t.Fatalf("dequeued %v, want the 3 jobs of the transition", ids(ds))
	}
}

func (s *suite) concurrentClaims(t *testing.T) {
	// An any-join's claim: many transitions create one key if absent; exactly one wins,
	// and the value stored is the winner's.
	b, _ := s.open(t)
	createRun(t, b, "r")
	const claimants = 16
	var mu sync.Mutex
	var winners []string
	var wg sync.WaitGroup
	for i := range claimants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := fmt.Sprint("claimant-", i)
			var won bool
			err := b.Update(context.Background(), "r", func(tx backend.Tx) error {
				var err error
				won, err = tx.PutIfAbsent("c|join", []byte(me))
				if won {
					tx.Enqueue(job(me, 0))
				}
				return err
			})
			if err != nil {
				t.Errorf("%s: %v", me, err)
				return
			}
			if won {
				mu.Lock()
				winners = append(winners, me)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d of %d concurrent claims won (%v), want exactly 1", len(winners), claimants, winners)
	}
	if _, vals := read(t, b, "r", "c|join"); string(vals["c|join"]) != winners[0] {
		t.Errorf("the claim holds %q, want the winner %q", vals["c|join"], winners[0])
	}
	ds := take(t, b, 1, time.Minute, 5*time.Second)
	if got := ids(ds); len(got) != 1 || got[0] != winners[0] {
		t.Errorf("dequeued %v, want the winner's job", got)
	}
	none(t, b, 100*time.Millisecond, "only the winner enqueued a job")
}

func (s *suite) concurrentIncr(t *testing.T) {
	b, _ := s.open(t)
	createRun(t, b, "r")
	const writers, each = 8, 5
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				var n int64
				err := b.Update(context.Background(), "r", func(tx backend.Tx) error {
					var err error
					n, err = tx.Incr("open", 1)
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[n] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if _, vals := read(t, b, "r", "open"); string(vals["open"]) != fmt.Sprint(writers*each) {
		t.Errorf("counter = %q after %d concurrent increments", vals["open"], writers*each)
	}
	if len(seen) != writers*each {
		t.Errorf("the increments returned %d distinct values, want %d (each its own new value)", len(seen), writers*each)
	}
}

func (s *suite) joinArrivals(t *testing.T) {
	// An all-join: each predecessor's arrival is recorded once however often it is
	// delivered, and exactly one transition sees the last arrival and claims the join.
	b, _ := s.open(t)
	createRun(t, b, "r")
	const preds, dups = 6, 3
	var mu sync.Mutex
	added, ready := 0, 0
	var wg sync.WaitGroup
	for p := range preds {
		for range dups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var isNew, isReady bool
				err := b.Update(context.Background(), "r", func(tx backend.Tx) error {
					isNew, isReady = false, false
					var err error
					if isNew, err = tx.PutIfAbsent(fmt.Sprint("a|join|p", p), []byte{'1'}); err != nil || !isNew {
						return err
					}
					n, err := tx.Incr("ac|join", 1)
					if err != nil || n < preds {
						return err
					}
					if isReady, err = tx.PutIfAbsent("c|join", nil); isReady {
						tx.Enqueue(job("join", 0))
					}
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if isNew {
					added++
				}
				if isReady {
					ready++
				}
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if added != preds || ready != 1 {
		t.Fatalf("%d arrivals recorded and the join claimed %d times; want %d and 1", added, ready, preds)
	}
	if _, vals := read(t, b, "r", "ac|join"); string(vals["ac|join"]) != fmt.Sprint(preds) {
		t.Errorf("arrival count = %q, want %d", vals["ac|join"], preds)
	}
	if ds := take(t, b, 1, time.Minute, 5*time.Second); len(ds) != 1 {
		t.Errorf("dequeued %v, want the join's job", ids(ds))
	}
	none(t, b, 100*time.Millisecond, "the join was claimed once")
}

func (s *suite) runsAreIsolated(t *testing.T) {
	b, _ := s.open(t)
	createRun(t, b, "r1")
	createRun(t, b, "r2")
	var wg sync.WaitGroup
	for _, id := range []string{"r1", "r2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				err := b.Update(context.Background(), id, func(tx backend.Tx) error {
					if _, err := tx.Incr("n", 1); err != nil {
						return err
					}
					return tx.Put("owner", []byte(id+fmt.Sprint(i)))
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for _, id := range []string{"r1", "r2"} {
		if _, vals := read(t, b, id, "n", "owner"); string(vals["n"]) != "10" || string(vals["owner"]) != id+"9" {
			t.Errorf("run %s: %q, want n=10 owner=%s9", id, vals, id)
		}
	}
	update(t, b, "r1", func(tx backend.Tx) error { return tx.Put("only-r1", []byte("x")) })
	if _, vals := read(t, b, "r2", "only-r1"); len(vals) != 0 {
		t.Errorf("run r2 sees run r1's key: %q", vals)
	}
}

func (s *suite) listRuns(t *testing.T) {
	b, _ := s.open(t)
	ctx := ctxT(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	runs := []struct {
		id, wf string
		st     backend.Status
	}{
		{"a", "order", backend.Running}, {"b", "order", backend.Completed}, {"c", "moderation", backend.Completed},
		{"d", "order", backend.Failed}, {"e", "moderation", backend.Running}, {"f", "order", backend.Cancelled},
	}
	for i, r := range runs {
		run := &backend.Run{ID: r.id, Workflow: r.wf, Version: "1", Status: backend.Running,
			Created: base.Add(time.Duration(i) * time.Second), Updated: base}
		if ok, err := b.CreateRun(ctx, run, func(backend.Tx) error { return nil }); err != nil || !ok {
			t.Fatalf("CreateRun(%s) = %v, %v", r.id, ok, err)
		}
		if r.st != backend.Running {
			update(t, b, r.id, func(tx backend.Tx) error { tx.Run().Status = r.st; return nil })
		}
	}
	list := func(f backend.RunFilter) []string {
		t.Helper()
		rs, err := b.ListRuns(ctx, f)
		if err != nil {
			t.Fatalf("ListRuns(%+v): %v", f, err)
		}
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.ID
		}
		return out
	}
	for _, tc := range []struct {
		f    backend.RunFilter
		want []string
	}{
		{backend.RunFilter{}, []string{"f", "e", "d", "c", "b", "a"}},
		{backend.RunFilter{Status: backend.Completed}, []string{"c", "b"}},
		{backend.RunFilter{Status: backend.Running}, []string{"e", "a"}},
		{backend.RunFilter{Workflow: "order"}, []string{"f", "d", "b", "a"}},
		{backend.RunFilter{Workflow: "moderation", Status: backend.Running}, []string{"e"}},
		{backend.RunFilter{Status: backend.Failed, Workflow: "moderation"}, []string{}},
		{backend.RunFilter{Limit: 2}, []string{"f", "e"}},
		{backend.RunFilter{Status: backend.Completed, Limit: 1}, []string{"c"}},
	} {
		if got := list(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("ListRuns(%+v) = %v, want %v (newest first)", tc.f, got, tc.want)
		}
	}
	rs, err := b.ListRuns(ctx, backend.RunFilter{Workflow: "moderation", Status: backend.Completed})
	if err != nil || len(rs) != 1 || rs[0].Workflow != "moderation" || rs[0].Version != "1" || !rs[0].Created.Equal(base.Add(2*time.Second)) {
		t.Errorf("ListRuns returned %+v, %v; want run c with its fields", rs, err)
	}
}

func (s *suite) listStalledRuns(t *testing.T) {
	// The reconciler's query: running runs not updated since a time.
	b, _ := s.open(t)
	ctx := ctxT(t)
	for _, id := range []string{"old1", "old2", "touched", "done"} {
		createRun(t, b, id)
	}
	update(t, b, "done", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil })
	time.Sleep(50 * time.Millisecond)
	cutoff := time.Now()
	time.Sleep(50 * time.Millisecond)
	update(t, b, "touched", func(tx backend.Tx) error { _, err := tx.Incr("n", 1); return err })
	rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running, UpdatedBefore: cutoff})
	if err != nil {
		t.Fatal(err)
	}
	got := ids2(rs)
	sort.Strings(got)
	if want := []string{"old1", "old2"}; !slices.Equal(got, want) {
		t.Errorf("running runs not updated since the cutoff = %v, want %v", got, want)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{UpdatedBefore: cutoff}); err != nil || len(rs) != 3 {
		t.Errorf("runs of any status not updated since the cutoff = %v, %v; want old1, old2 and done", ids2(rs), err)
	}
}

func ids2(rs []*backend.Run) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

func (s *suite) waitRun(t *testing.T) {
	b, _ := s.open(t)
	w, ok := b.(backend.Waiter)
	if !ok {
		t.Skip("the backend does not implement backend.Waiter (clients poll)")
	}
	ctx := ctxT(t)
	createRun(t, b, "r")
	setStatus := func(st backend.Status) {
		update(t, b, "r", func(tx backend.Tx) error { tx.Run().Status = st; return nil })
	}
	waiting := func() <-chan *backend.Run {
		done := make(chan *backend.Run, 1)
		go func() {
			r, err := w.WaitRun(ctx, "r")
			if err != nil {
				t.Errorf("WaitRun: %v", err)
			}
			done <- r
		}()
		return done
	}
	for _, final := range []backend.Status{backend.Completed, backend.Failed} { // the second time, after a rerun
		done := waiting()
		select {
		case r := <-done:
			t.Fatalf("WaitRun returned %+v while the run is running", r)
		case <-time.After(50 * time.Millisecond):
		}
		setStatus(final)
		select {
		case r := <-done:
			if r == nil || r.Status != final {
				t.Fatalf("WaitRun = %+v, want the %s run", r, final)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("WaitRun did not return when the run became %s", final)
		}
		if r, err := w.WaitRun(ctx, "r"); err != nil || r.Status != final {
			t.Fatalf("WaitRun of a %s run = %+v, %v; want it at once", final, r, err)
		}
		setStatus(backend.Running)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := w.WaitRun(cctx, "r"); err == nil {
		t.Error("WaitRun of a running run returned no error when its ctx ended")
	}
}

func (s *suite) expireRuns(t *testing.T) {
	b, _ := s.open(t)
	e, ok := b.(backend.Expirer)
	if !ok {
		t.Skip("the backend does not implement backend.Expirer")
	}
	ctx := ctxT(t)
	for _, id := range []string{"done", "failed", "running", "parent", "child", "recent"} {
		r := &backend.Run{ID: id, Workflow: "wf", Status: backend.Running, Created: time.Now(), Updated: time.Now()}
		if id == "child" {
			r.Parent, r.ParentNode = "parent", "sub"
		}
		if ok, err := b.CreateRun(ctx, r, func(tx backend.Tx) error { return tx.Put("k", []byte(id)) }); err != nil || !ok {
			t.Fatalf("CreateRun(%s) = %v, %v", id, ok, err)
		}
	}
	for id, st := range map[string]backend.Status{"done": backend.Completed, "failed": backend.Failed, "child": backend.Completed} {
		update(t, b, id, func(tx backend.Tx) error { tx.Run().Status = st; return nil })
	}
	time.Sleep(20 * time.Millisecond)
	before := time.Now()
	time.Sleep(20 * time.Millisecond)
	update(t, b, "recent", func(tx backend.Tx) error { tx.Run().Status = backend.Cancelled; return nil })

	n, err := e.ExpireRuns(ctx, before)
	if err != nil || n != 2 {
		t.Fatalf("ExpireRuns = %d, %v; want 2 (done and failed)", n, err)
	}
	for _, id := range []string{"done", "failed"} {
		if _, _, err := b.Read(ctx, id); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("Read of expired run %s = %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"running", "parent", "child", "recent"} {
		if _, vals := read(t, b, id, "k"); string(vals["k"]) != id {
			t.Errorf("run %s lost its state: %q", id, vals)
		}
	}
	// An expired id can be used again, from scratch.
	createRun(t, b, "done")
	if _, vals := read(t, b, "done", "k"); len(vals) != 0 {
		t.Errorf("a new run with an expired run's id has its state: %q", vals)
	}
	// Once the parent ends, its finished child can go too.
	update(t, b, "parent", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil })
	if n, err := e.ExpireRuns(ctx, time.Now().Add(time.Second)); err != nil || n != 3 {
		t.Fatalf("ExpireRuns = %d, %v; want 3 (parent, child, recent)", n, err)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{}); err != nil || len(rs) != 2 {
		t.Errorf("runs left = %v, %v; want running and the new done", ids2(rs), err)
	}
}

func (s *suite) valueSizeLimit(t *testing.T) {
	limit := s.cfg.MaxValueSize
	if limit <= 0 {
		t.Skip("Config.MaxValueSize is 0: the backend stores values of any size")
	}
	b, _ := s.open(t)
	ctx := ctxT(t)
	createRun(t, b, "r")
	fits := bytes.Repeat([]byte{'v'}, limit)
	update(t, b, "r", func(tx backend.Tx) error { return tx.Put("fits", fits) })
	if _, vals := read(t, b, "r", "fits"); !bytes.Equal(vals["fits"], fits) {
		t.Errorf("a value of MaxValueSize (%d) bytes came back with %d bytes", limit, len(vals["fits"]))
	}
	over := append(fits, 'x')
	for what, fn := range map[string]func(tx backend.Tx) error{
		"Put":         func(tx backend.Tx) error { return tx.Put("over", over) },
		"PutIfAbsent": func(tx backend.Tx) error { _, err := tx.PutIfAbsent("over", over); return err },
		"the result":  func(tx backend.Tx) error { tx.Run().Result = over; return nil },
	} {
		err := b.Update(ctx, "r", fn)
		if !errors.Is(err, backend.ErrTooLarge) {
			t.Errorf("%s of %d bytes: Update = %v, want an error wrapping backend.ErrTooLarge", what, len(over), err)
		}
	}
	if r, vals := read(t, b, "r", "over"); len(vals) != 0 || len(r.Result) != 0 {
		t.Errorf("an oversized value was stored: %d bytes, result %d bytes", len(vals["over"]), len(r.Result))
	}
	big := &backend.Run{ID: "big", Workflow: "wf", Status: backend.Running, Input: over, Created: time.Now(), Updated: time.Now()}
	if _, err := b.CreateRun(ctx, big, func(backend.Tx) error { return nil }); !errors.Is(err, backend.ErrTooLarge) {
		t.Errorf("CreateRun with an input of %d bytes = %v, want an error wrapping backend.ErrTooLarge", len(over), err)
	}
}

func (s *suite) durableReopen(t *testing.T) {
	b, url := s.open(t)
	if !s.cfg.Durable || url == "" {
		t.Skip("not a durable backend with a URL")
	}
	ctx := ctxT(t)
	createRun(t, b, "r")
	update(t, b, "r", func(tx backend.Tx) error {
		tx.Enqueue(job("kept", 0))
		return tx.Put("k", []byte("v"))
	})
	open := func() backend.Backend {
		b2, err := backend.Open(ctx, url)
		if err != nil {
			t.Fatalf("open %s: %v", url, err)
		}
		return b2
	}
	// Another connection sees the state at once, and writes through it are seen too.
	b2 := open()
	if _, vals := read(t, b2, "r", "k"); string(vals["k"]) != "v" {
		t.Errorf("a second connection reads %q", vals)
	}
	update(t, b2, "r", func(tx backend.Tx) error { return tx.Put("k2", []byte("v2")) })
	if err := b2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// Closed and opened again: the state and the queued job are there.
	b3 := open()
	defer b3.Close()
	if r, vals := read(t, b3, "r", "k", "k2"); r.Status != backend.Running || string(vals["k"]) != "v" || string(vals["k2"]) != "v2" {
		t.Errorf("after reopening: %+v %q", r, vals)
	}
	if ds := take(t, b3, 1, time.Minute, 5*time.Second); len(ds) != 1 || ds[0].Job.ID != "kept" {
		t.Errorf("after reopening: dequeued %v, want the queued job", ids(ds))
	}
}
