package mem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/backends/mem"
	"github.com/flowgen/flowgen/runtime/backend"
)

// TestBackend runs the shared backend suite on mem, with a value size limit so that the
// suite's oversized-value cases run too.
func TestBackend(t *testing.T) {
	const limit = 64 << 10
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			b := mem.New(mem.WithMaxValueSize(limit))
			t.Cleanup(func() { b.Close() })
			return b, ""
		},
		MaxValueSize: limit,
	})
}

func job(id string, prio int) backend.Job { return backend.Job{ID: id, Run: "r", Priority: prio} }

func ids(ds []*backend.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Job.ID
	}
	return out
}

func TestQueueOrder(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	defer b.Close()
	later := job("later", 9)
	later.NotBefore = time.Now().Add(50 * time.Millisecond)
	if err := b.Enqueue(ctx, job("a", 0), job("b", 0), job("urgent", 5), later); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Dequeue(ctx, 10, time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(ds); len(got) != 3 || got[0] != "urgent" || got[1] != "a" || got[2] != "b" {
		t.Fatalf("dequeued %v, want [urgent a b] (priority, then FIFO; the delayed job not yet)", got)
	}
	start := time.Now()
	ds, err = b.Dequeue(ctx, 10, time.Second, time.Second)
	if err != nil || len(ds) != 1 || ds[0].Job.ID != "later" {
		t.Fatalf("dequeued %v, %v; want the delayed job", ids(ds), err)
	}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Errorf("the delayed job came %v late", waited)
	}
}

func TestDequeueTimesOut(t *testing.T) {
	b := mem.New()
	defer b.Close()
	ds, err := b.Dequeue(context.Background(), 1, time.Second, 20*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Fatalf("Dequeue on an empty queue = %v, %v; want nothing", ds, err)
	}
	b.Close()
	if _, err := b.Dequeue(context.Background(), 1, time.Second, time.Second); !errors.Is(err, backend.ErrClosed) {
		t.Fatalf("Dequeue after Close = %v, want ErrClosed", err)
	}
}

func TestLeaseExpiryAndStaleHandles(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	defer b.Close()
	if err := b.Enqueue(ctx, job("j", 0)); err != nil {
		t.Fatal(err)
	}
	first, _ := b.Dequeue(ctx, 1, 20*time.Millisecond, 0)
	second, _ := b.Dequeue(ctx, 1, time.Second, time.Second) // after the first lease expired
	if len(first) != 1 || len(second) != 1 || second[0].Deliveries != 2 {
		t.Fatalf("deliveries %v then %v, want the job twice", first, second)
	}
	// The first holder's lease is gone: its ack, requeue or dead letter must not touch
	// the second holder's lease.
	if err := b.Ack(ctx, first[0]); err != nil {
		t.Fatal(err)
	}
	if err := b.Requeue(ctx, first[0], job("retry", 0)); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, first[0], "stale"); err != nil {
		t.Fatal(err)
	}
	if n := b.Pending(); n != 1 {
		t.Fatalf("pending = %d after stale handles were used, want 1 (the second lease)", n)
	}
	if len(b.DeadLetters()) != 0 {
		t.Fatal("a stale handle dead-lettered the job")
	}
	if err := b.Ack(ctx, second[0]); err != nil {
		t.Fatal(err)
	}
	if n := b.Pending(); n != 0 {
		t.Fatalf("pending = %d after the ack, want 0", n)
	}
}

func TestExtendKeepsLease(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	defer b.Close()
	_ = b.Enqueue(ctx, job("j", 0))
	ds, _ := b.Dequeue(ctx, 1, 30*time.Millisecond, 0)
	for range 3 {
		time.Sleep(15 * time.Millisecond)
		if err := b.Extend(ctx, 30*time.Millisecond, ds...); err != nil {
			t.Fatal(err)
		}
	}
	if again, _ := b.Dequeue(ctx, 1, time.Second, 0); len(again) != 0 {
		t.Fatal("an extended lease expired")
	}
	if err := b.Requeue(ctx, ds[0], job("next", 0)); err != nil {
		t.Fatal(err)
	}
	next, _ := b.Dequeue(ctx, 1, time.Second, 0)
	if len(next) != 1 || next[0].Job.ID != "next" || next[0].Deliveries != 1 {
		t.Fatalf("after Requeue dequeued %v, want the next job, first delivery", ids(next))
	}
}

func TestRunState(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	defer b.Close()
	r := &backend.Run{ID: "r1", Workflow: "wf", Status: backend.Running}
	created, err := b.CreateRun(ctx, r, func(tx backend.Tx) error {
		_, err := tx.Incr("open", 2)
		tx.Enqueue(job("start", 0))
		return err
	})
	if err != nil || !created {
		t.Fatalf("CreateRun = %v, %v", created, err)
	}
	if created, err := b.CreateRun(ctx, r, func(backend.Tx) error { t.Error("init of a duplicate run"); return nil }); err != nil || created {
		t.Fatalf("second CreateRun = %v, %v; want not created", created, err)
	}
	if n := b.Pending(); n != 1 {
		t.Fatalf("pending = %d, want the job enqueued by CreateRun", n)
	}

	// A failing transition changes nothing.
	boom := errors.New("boom")
	err = b.Update(ctx, "r1", func(tx backend.Tx) error {
		_ = tx.Put("k", []byte("v"))
		tx.Enqueue(job("lost", 0))
		tx.Run().Status = backend.Failed
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	run, vals, err := b.Read(ctx, "r1", "k", "open")
	if err != nil || run.Status != backend.Running || vals["k"] != nil || string(vals["open"]) != "2" || b.Pending() != 1 {
		t.Fatalf("after a failed transition: %+v %q %v, pending %d", run, vals, err, b.Pending())
	}

	err = b.Update(ctx, "r1", func(tx backend.Tx) error {
		if ok, _ := tx.PutIfAbsent("k", nil); !ok {
			t.Error("PutIfAbsent of an absent key did not store")
		}
		if ok, _ := tx.PutIfAbsent("k", []byte("x")); ok {
			t.Error("PutIfAbsent of a key written in the same transition stored")
		}
		if v, _ := tx.Get("k"); v[0] == nil {
			t.Error("an empty value reads as absent")
		}
		_ = tx.Delete("open")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, vals, _ = b.Read(ctx, "r1", "k", "open")
	if _, ok := vals["k"]; !ok || vals["open"] != nil {
		t.Fatalf("values = %q, want k present and open deleted", vals)
	}
	if _, _, err := b.Read(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Read of an unknown run = %v, want ErrNotFound", err)
	}
}

func TestWaitRunAcrossRerun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b := mem.New()
	defer b.Close()
	_, _ = b.CreateRun(ctx, &backend.Run{ID: "r", Status: backend.Running}, func(backend.Tx) error { return nil })
	setStatus := func(s backend.Status) {
		if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = s; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setStatus(backend.Completed)
	if r, err := b.WaitRun(ctx, "r"); err != nil || r.Status != backend.Completed {
		t.Fatalf("WaitRun = %v, %v", r, err)
	}
	setStatus(backend.Running) // a rerun
	done := make(chan *backend.Run)
	go func() {
		r, _ := b.WaitRun(ctx, "r")
		done <- r
	}()
	select {
	case r := <-done:
		t.Fatalf("WaitRun returned %+v while the run is running again", r)
	case <-time.After(20 * time.Millisecond):
	}
	setStatus(backend.Failed)
	if r := <-done; r == nil || r.Status != backend.Failed {
		t.Fatalf("WaitRun = %+v, want the failed run", r)
	}
}

func TestListRuns(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	defer b.Close()
	base := time.Now()
	for i, s := range []backend.Status{backend.Running, backend.Completed, backend.Completed} {
		r := &backend.Run{ID: string(rune('a' + i)), Workflow: "wf", Status: s, Created: base.Add(time.Duration(i) * time.Second)}
		_, _ = b.CreateRun(ctx, r, func(backend.Tx) error { return nil })
	}
	rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Completed})
	if err != nil || len(rs) != 2 || rs[0].ID != "c" || rs[1].ID != "b" {
		t.Fatalf("ListRuns(completed) = %v, %v; want c, b (newest first)", rs, err)
	}
	if rs, _ := b.ListRuns(ctx, backend.RunFilter{Limit: 1}); len(rs) != 1 || rs[0].ID != "c" {
		t.Fatalf("ListRuns(limit 1) = %v", rs)
	}
}
