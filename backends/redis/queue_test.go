package redis

import (
	"context"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/runtime/backend"
)

func testJob(id string, prio int) backend.Job {
	return backend.Job{ID: id, Run: "r", Workflow: "wf", Version: "v", Node: "n", Attempt: 1, Priority: prio}
}

func dequeue(t *testing.T, b *Backend, max int, lease time.Duration) []*backend.Delivery {
	t.Helper()
	ds, err := b.Dequeue(context.Background(), max, lease, 0)
	if err != nil {
		t.Fatalf("dequeue: %v", err)
	}
	return ds
}

func jobIDs(ds []*backend.Delivery) string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.Job.ID
	}
	return strings.Join(ids, ",")
}

// A stale holder, whose lease expired and whose job was delivered again, can no longer
// ack, requeue, extend or dead-letter it.
func TestStaleLeaseHandle(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	if err := b.Enqueue(ctx, testJob("a", 0)); err != nil {
		t.Fatal(err)
	}
	first := dequeue(t, b, 1, 50*time.Millisecond)
	if len(first) != 1 || first[0].Deliveries != 1 {
		t.Fatalf("first delivery: %+v", first)
	}
	time.Sleep(80 * time.Millisecond)
	second := dequeue(t, b, 1, time.Minute)
	if len(second) != 1 || second[0].Deliveries != 2 || second[0].Job.ID != "a" {
		t.Fatalf("redelivery after the lease expired: %+v", second)
	}
	stale := first[0]
	if err := b.ack(ctx, []lease{stale.Handle.(lease)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Requeue(ctx, stale, testJob("b", 0)); err != nil {
		t.Fatal(err)
	}
	if err := b.Extend(ctx, time.Hour, stale); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, stale, "stale"); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Pending(ctx); err != nil || n != 1 {
		t.Fatalf("pending = %d, %v; want the one job, still leased by its second holder", n, err)
	}
	if ds, _ := b.DeadLetters(ctx); len(ds) != 0 {
		t.Fatalf("a stale holder dead-lettered the job: %+v", ds)
	}
	// The current holder can.
	if err := b.Ack(ctx, second[0]); err != nil {
		t.Fatal(err)
	}
	b.flushAcks(t)
	if n, _ := b.Pending(ctx); n != 0 {
		t.Fatalf("pending after the current holder's ack = %d", n)
	}
}

// flushAcks waits until the acks sent in the background are applied.
func (b *Backend) flushAcks(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.acks.Lock()
		n := len(b.acks.pending)
		b.acks.Unlock()
		if n == 0 {
			time.Sleep(20 * time.Millisecond) // the last batch in flight
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("acks not sent")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPriorityAndFIFO(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	for _, j := range []backend.Job{testJob("a", 0), testJob("b", 5), testJob("c", 0), testJob("d", -3), testJob("e", 5), testJob("f", 0)} {
		if err := b.Enqueue(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if got := jobIDs(dequeue(t, b, 10, time.Minute)); got != "b,e,a,c,f,d" {
		t.Fatalf("order = %s, want b,e,a,c,f,d (priority, then FIFO)", got)
	}
	// A job whose lease expired goes back in its place, ahead of newer ones.
	if err := b.Enqueue(ctx, testJob("x", 0), testJob("y", 0)); err != nil {
		t.Fatal(err)
	}
	x := dequeue(t, b, 1, 30*time.Millisecond)
	if jobIDs(x) != "x" {
		t.Fatalf("got %s, want x", jobIDs(x))
	}
	time.Sleep(60 * time.Millisecond)
	if got := jobIDs(dequeue(t, b, 10, time.Minute)); got != "x,y" {
		t.Fatalf("after x's lease expired: %s, want x,y", got)
	}
}

func TestDelayedJobs(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	later := testJob("later", 9)
	later.NotBefore = time.Now().Add(300 * time.Millisecond)
	if err := b.Enqueue(ctx, later, testJob("now", 0)); err != nil {
		t.Fatal(err)
	}
	if got := jobIDs(dequeue(t, b, 10, time.Minute)); got != "now" {
		t.Fatalf("got %s, want only the due job", got)
	}
	start := time.Now()
	ds, err := b.Dequeue(ctx, 10, time.Minute, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if jobIDs(ds) != "later" {
		t.Fatalf("got %s, want the delayed job", jobIDs(ds))
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("the delayed job came %v after it was due", waited)
	}
	if !ds[0].Job.NotBefore.Equal(later.NotBefore) {
		t.Errorf("NotBefore = %v, want %v", ds[0].Job.NotBefore, later.NotBefore)
	}
}

func TestDequeueWokenByEnqueue(t *testing.T) {
	ctx := context.Background()
	u := testURL(t, "poll=30s")
	b, other := openT(t, u), openT(t, u)
	done := make(chan []*backend.Delivery, 1)
	go func() {
		ds, _ := b.Dequeue(ctx, 1, time.Minute, 20*time.Second)
		done <- ds
	}()
	time.Sleep(100 * time.Millisecond) // the Dequeue waits
	start := time.Now()
	if err := other.Enqueue(ctx, testJob("a", 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case ds := <-done:
		if jobIDs(ds) != "a" {
			t.Fatalf("got %q", jobIDs(ds))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("woken after %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting Dequeue was not woken by another process's Enqueue")
	}
}

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t, "maxdeliveries=2")
	if err := b.Enqueue(ctx, testJob("poison", 0), testJob("lost", 0)); err != nil {
		t.Fatal(err)
	}
	ds := dequeue(t, b, 2, 30*time.Millisecond)
	if len(ds) != 2 {
		t.Fatalf("got %d jobs", len(ds))
	}
	if err := b.DeadLetter(ctx, ds[0], "boom: the last error"); err != nil {
		t.Fatal(err)
	}
	// "lost" is never acked: its lease expires twice, then it is dead-lettered.
	time.Sleep(60 * time.Millisecond)
	if got := dequeue(t, b, 2, 30*time.Millisecond); jobIDs(got) != "lost" || got[0].Deliveries != 2 {
		t.Fatalf("second delivery: %+v", got)
	}
	time.Sleep(60 * time.Millisecond)
	if got := dequeue(t, b, 2, 30*time.Millisecond); len(got) != 0 {
		t.Fatalf("delivered a third time: %+v", got)
	}
	dead, err := b.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 {
		t.Fatalf("dead letters: %+v", dead)
	}
	if dead[0].Job.ID != "poison" || dead[0].Reason != "boom: the last error" || dead[0].Deliveries != 1 {
		t.Errorf("first dead letter: %+v", dead[0])
	}
	if dead[1].Job.ID != "lost" || dead[1].Deliveries != 2 || !strings.Contains(dead[1].Reason, "lease expired") {
		t.Errorf("second dead letter: %+v", dead[1])
	}
	if n, _ := b.Pending(ctx); n != 0 {
		t.Errorf("pending = %d after dead-lettering", n)
	}

	// A body that cannot be decoded is dead-lettered by Dequeue, and nothing else.
	if err := b.rdb.ZAdd(ctx, b.k.ready, goredis.Z{Score: 0, Member: "00000000000000000|0|1:r\x09garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, testJob("fine", 0)); err != nil {
		t.Fatal(err)
	}
	if got := dequeue(t, b, 5, time.Minute); jobIDs(got) != "fine" {
		t.Fatalf("got %q, want only the decodable job", jobIDs(got))
	}
	dead, _ = b.DeadLetters(ctx)
	if len(dead) != 3 || !strings.Contains(dead[2].Reason, "cannot decode") || dead[2].Body == nil {
		t.Fatalf("dead letters: %+v", dead)
	}
}

// Extend keeps a lease alive past its first deadline.
func TestExtend(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	if err := b.Enqueue(ctx, testJob("a", 0)); err != nil {
		t.Fatal(err)
	}
	ds := dequeue(t, b, 1, 60*time.Millisecond)
	for range 4 {
		time.Sleep(30 * time.Millisecond)
		if err := b.Extend(ctx, 60*time.Millisecond, ds...); err != nil {
			t.Fatal(err)
		}
	}
	if got := dequeue(t, b, 1, time.Minute); len(got) != 0 {
		t.Fatalf("delivered again while its lease was extended: %+v", got)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	j := backend.Job{ID: "id", Run: "run:{x}|9:", Workflow: "wf", Version: "v2", Kind: backend.Fallback,
		Node: "n@1.2#3", From: "p", Attempt: 3, Priority: -7, NotBefore: time.Unix(0, 1234567890), Err: "e\x00rr"}
	got, err := decodeJob(encodeJob(&j))
	if err != nil {
		t.Fatal(err)
	}
	if got != j {
		t.Fatalf("job round trip:\n got %+v\nwant %+v", got, j)
	}
	r := &backend.Run{ID: "r", Workflow: "wf", Version: "1", Status: backend.Failed, Priority: 3,
		Input: []byte(`{"a":1}`), Result: []byte{}, FailedNode: "n", Reason: "why",
		Parent: "p", ParentNode: "pn", Metadata: map[string]string{"k": "v", "a": ""}, Created: time.Unix(0, 42)}
	rr, err := decodeRecord("r", encodeRecord(r))
	if err != nil {
		t.Fatal(err)
	}
	if rr.Workflow != r.Workflow || rr.Status != r.Status || string(rr.Input) != string(r.Input) || rr.Result == nil ||
		rr.Reason != r.Reason || rr.Parent != r.Parent || rr.Metadata["k"] != "v" || len(rr.Metadata) != 2 || !rr.Created.Equal(r.Created) {
		t.Fatalf("record round trip: %+v", rr)
	}
	if rr, _ := decodeRecord("r", encodeRecord(&backend.Run{})); rr.Input != nil || rr.Result != nil {
		t.Fatalf("nil input and result came back as %q, %q", rr.Input, rr.Result)
	}
}

// Jobs a commit hands over between a Dequeue's look and its wait wake it at once.
func TestHandoffNotLost(t *testing.T) {
	var h handoff
	h.signal = make(chan struct{})
	if ds := h.take(1); ds != nil {
		t.Fatal("took from nothing")
	}
	ch := h.wait(1, time.Second)
	k, _ := h.reserve(3)
	if k != 1 {
		t.Fatalf("reserved %d for a demand of 1", k)
	}
	h.unwait(1) // the waiting Dequeue gives up before the commit's reply
	h.deliver(k, []*backend.Delivery{{Job: testJob("a", 0)}})
	select {
	case <-ch:
	default:
		t.Fatal("the delivery did not signal")
	}
	// The next Dequeue looked (nothing yet), then the jobs came, then it waits.
	h.ready = nil
	if ds := h.take(1); ds != nil {
		t.Fatal("took from nothing")
	}
	h.deliver(0, []*backend.Delivery{{Job: testJob("b", 0)}})
	select {
	case <-h.wait(1, time.Second):
	case <-time.After(100 * time.Millisecond):
		t.Fatal("jobs handed over before the wait did not wake it")
	}
	if ds := h.take(5); len(ds) != 1 || ds[0].Job.ID != "b" {
		t.Fatalf("took %v", ds)
	}
}
