package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/backends/mem"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// message is what the trigger below hands to HandleMessage: a job and its deliveries.
type message struct {
	Job        backend.Job
	Deliveries int
}

// decodingMem is the mem backend with a message format of its own, so that a
// serverless trigger can be played by a test: the trigger takes a job off the queue,
// hands its body to HandleMessage, and acks it only when HandleMessage returns nil.
type decodingMem struct {
	*mem.Backend
	deadLettered atomic.Int64
}

func (b *decodingMem) DecodeMessage(body []byte) (*backend.Delivery, error) {
	var m message
	if err := json.Unmarshal(body, &m); err != nil || m.Job.Run == "" {
		return nil, errors.New("not a job")
	}
	return &backend.Delivery{Job: m.Job, Deliveries: m.Deliveries}, nil
}

func (b *decodingMem) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	if d.Handle == nil {
		b.deadLettered.Add(1)
		return nil
	}
	return b.Backend.DeadLetter(ctx, d, reason)
}

func intOutput(v int) (runtime.Output, error) {
	data, err := json.Marshal(v)
	return runtime.Output{Data: data}, err
}

func TestHandleMessageRunsAWorkflowWithoutAPollingWorker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b := &decodingMem{Backend: mem.New()}
	c := runtime.New(b)
	defer c.Close()

	var failures atomic.Int64
	wf := &runtime.Workflow{ID: "serverless", Start: []string{"a"}, Terminals: []string{"b"}, Nodes: map[string]*runtime.Node{
		"a": {ID: "a", MaxAttempts: 1, Edges: []runtime.Edge{{Target: "b"}},
			Exec: func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
				var in int
				if err := runtime.Decode(t.RunInput(), &in); err != nil {
					return runtime.Output{}, err
				}
				return intOutput(in + 1)
			}},
		"b": {ID: "b", MaxAttempts: 2, Preds: []string{"a"}, Sources: []string{"a"},
			Exec: func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
				if t.Attempt == 1 {
					failures.Add(1)
					return runtime.Output{}, errors.New("transient")
				}
				var in int
				if err := t.DecodeOutput("a", &in); err != nil {
					return runtime.Output{}, err
				}
				return intOutput(in * 10)
			}},
	}}
	w := runtime.NewWorker(c)
	w.Register(wf)

	if err := w.HandleMessage(ctx, []byte("not json")); err == nil {
		t.Error("HandleMessage accepted a body that is not a job")
	}

	id, err := runtime.Start(ctx, c, wf, 4)
	if err != nil {
		t.Fatal(err)
	}
	handled := 0
	for handled < 20 {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		body, _ := json.Marshal(message{Job: ds[0].Job, Deliveries: ds[0].Deliveries})
		if err := w.HandleMessage(ctx, body); err != nil {
			t.Fatalf("HandleMessage: %v", err)
		}
		handled++
		if err := b.Ack(ctx, ds...); err != nil {
			t.Fatal(err)
		}
	}
	// a, b's failed attempt (whose retry is a new message, after its backoff), b.
	if handled != 3 || failures.Load() != 1 {
		t.Errorf("handled %d messages with %d failures, want 3 and 1", handled, failures.Load())
	}
	got, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	var res int
	if err := json.Unmarshal(got, &res); err != nil || res != 50 {
		t.Errorf("result %s (%v), want 50", got, err)
	}

	// A job for an unknown node is dead-lettered through the backend, and the trigger
	// is told the message is settled.
	body, _ := json.Marshal(message{Job: backend.Job{Run: string(id), Workflow: wf.ID, Node: "nope", Kind: backend.Exec, Attempt: 1}, Deliveries: 1})
	if err := w.HandleMessage(ctx, body); err != nil {
		t.Errorf("a job for an unknown node: %v, want nil (dead-lettered)", err)
	}
	if n := b.deadLettered.Load(); n != 1 {
		t.Errorf("dead letters: %d, want 1", n)
	}
}

func TestHandleMessageNeedsADecodingBackend(t *testing.T) {
	c := runtime.New(mem.New())
	defer c.Close()
	err := runtime.NewWorker(c).HandleMessage(context.Background(), []byte("{}"))
	if err == nil || !strings.Contains(err.Error(), "cannot decode queue messages") {
		t.Errorf("err = %v", err)
	}
}

func TestHandleMessagePostponesAJobNotDue(t *testing.T) {
	ctx := context.Background()
	b := &decodingMem{Backend: mem.New()}
	c := runtime.New(b)
	defer c.Close()
	ran := false
	wf := &runtime.Workflow{ID: "later", Start: []string{"a"}, Terminals: []string{"a"}, Nodes: map[string]*runtime.Node{
		"a": {ID: "a", MaxAttempts: 1, Exec: func(context.Context, *runtime.Task) (runtime.Output, error) {
			ran = true
			return intOutput(1)
		}},
	}}
	w := runtime.NewWorker(c)
	w.Register(wf)
	due := time.Now().Add(time.Hour)
	job := backend.Job{ID: "j", Run: "r", Workflow: wf.ID, Node: "a", Kind: backend.Exec, Attempt: 1, NotBefore: due}
	body, _ := json.Marshal(message{Job: job, Deliveries: 1})
	if err := w.HandleMessage(ctx, body); err != nil {
		t.Fatal(err)
	}
	if ran {
		t.Error("a job due in an hour ran")
	}
	// It is back in the queue, still delayed.
	if ds, _ := b.Dequeue(ctx, 1, time.Minute, 10*time.Millisecond); len(ds) != 0 {
		t.Errorf("the postponed job is visible at once: %+v", ds[0].Job)
	}
	if n := b.Pending(); n != 1 {
		t.Errorf("jobs queued: %d, want the postponed one", n)
	}
}
