package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// chain is a workflow n1 → … → nN; each node adds 1 to its input; node fail (if any)
// fails permanently.
func chain(id string, n int, fail string, execs *atomic.Int64) *runtime.Workflow {
	wf := &runtime.Workflow{ID: id, Version: "1", Start: []string{"n1"}, Terminals: []string{fmt.Sprintf("n%d", n)}, Nodes: map[string]*runtime.Node{}}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		node := &runtime.Node{ID: id, MaxAttempts: 2}
		if i > 1 {
			prev := fmt.Sprintf("n%d", i-1)
			node.Preds, node.Sources = []string{prev}, []string{prev}
		}
		if i < n {
			node.Edges = []runtime.Edge{{Target: fmt.Sprintf("n%d", i+1)}}
		}
		node.Exec = func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			execs.Add(1)
			if id == fail {
				return runtime.Output{}, runtime.Permanent(errors.New("declined"))
			}
			in := t.RunInput()
			if len(node.Sources) == 1 {
				in, _ = t.Output(node.Sources[0])
			}
			var v int
			if i > 1 {
				var prev struct{ V int }
				if err := json.Unmarshal(in, &prev); err != nil {
					return runtime.Output{}, runtime.Permanent(err)
				}
				v = prev.V
			} else if err := json.Unmarshal(in, &v); err != nil {
				return runtime.Output{}, runtime.Permanent(err)
			}
			// A large output, so that it is stored in Cosmos DB by reference.
			out, _ := json.Marshal(map[string]any{"v": v + 1, "pad": strings.Repeat("x", 200)})
			return runtime.Output{Data: out}, nil
		}
		wf.Nodes[id] = node
	}
	return wf
}

// trigger plays an Azure Functions queue trigger: it receives messages from the queue
// with azqueue, hands each body to HandleMessage and deletes the message when that
// returns nil, until done reports true.
func trigger(t *testing.T, q *azqueue.QueueClient, w *runtime.Worker, done func() bool) (handled, failed int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, vis := int32(16), int32(30)
	for !done() {
		if ctx.Err() != nil {
			t.Fatal("timed out: the run did not finish through HandleMessage")
		}
		out, err := q.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n, VisibilityTimeout: &vis})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		for _, m := range out.Messages {
			if err := w.HandleMessage(ctx, []byte(*m.MessageText)); err != nil {
				failed++
				continue // the trigger makes it visible again (here: after vis)
			}
			handled++
			if _, err := q.DeleteMessage(ctx, *m.MessageID, *m.PopReceipt, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	return handled, failed
}

func poisoned(t *testing.T, b *Backend) []poisonMessage {
	t.Helper()
	n := int32(32)
	out, err := b.poison.PeekMessages(context.Background(), &azqueue.PeekMessagesOptions{NumberOfMessages: &n})
	if err != nil {
		t.Fatal(err)
	}
	var ps []poisonMessage
	for _, m := range out.Messages {
		var p poisonMessage
		if err := json.Unmarshal([]byte(*m.MessageText), &p); err != nil {
			t.Fatalf("poison message %q: %v", *m.MessageText, err)
		}
		ps = append(ps, p)
	}
	return ps
}

// A run driven only through Worker.HandleMessage, as an Azure Functions queue trigger
// drives it: no polling worker, messages received and deleted by the trigger.
func TestHandleMessage(t *testing.T) {
	b, _ := open(t)
	c := runtime.New(b)
	var execs atomic.Int64
	wf := chain("serverless", 5, "", &execs)
	w := runtime.NewWorker(c)
	w.Register(wf)
	ctx := context.Background()
	id, err := runtime.Start(ctx, c, wf, 10)
	if err != nil {
		t.Fatal(err)
	}
	finished := func() bool {
		info, err := c.Status(ctx, id)
		return err == nil && info.Status != "running"
	}
	handled, failed := trigger(t, b.queue, w, finished)
	res, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ V int }
	if err := json.Unmarshal(res, &out); err != nil || out.V != 15 {
		t.Errorf("result %s, want v=15", res)
	}
	if handled != 5 || failed != 0 || execs.Load() != 5 {
		t.Errorf("%d messages handled, %d failed, %d node executions; want 5, 0, 5", handled, failed, execs.Load())
	}

	// A body that is not a job is an error, for the trigger's own poison handling.
	if err := w.HandleMessage(ctx, []byte("not a job")); err == nil {
		t.Error("HandleMessage of a body that is not a job returned nil")
	}
	// A base64 body (an Azure Functions trigger with messageEncoding base64) decodes.
	d, err := b.DecodeMessage([]byte("eyJpZCI6ImoiLCJydW4iOiJyIiwicHJpb3IiOjJ9")) // {"id":"j","run":"r","prior":2}
	if err != nil || d.Job.ID != "j" || d.Job.Run != "r" || d.Deliveries != 3 || d.Handle != nil {
		t.Errorf("DecodeMessage(base64) = %+v, %v", d, err)
	}
}

// A node that fails its run, through HandleMessage; then a dead letter of a delivery
// without a handle stores the job in the poison queue and deletes nothing.
func TestHandleMessageFailureAndDeadLetter(t *testing.T) {
	b, _ := open(t)
	c := runtime.New(b)
	var execs atomic.Int64
	wf := chain("serverless-fail", 3, "n2", &execs)
	w := runtime.NewWorker(c)
	w.Register(wf)
	ctx := context.Background()
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	trigger(t, b.queue, w, func() bool {
		info, err := c.Status(ctx, id)
		return err == nil && info.Status != "running"
	})
	if _, err := runtime.Await(ctx, c, id); !errors.Is(err, runtime.ErrRunFailed) {
		t.Fatalf("Await = %v, want a failed run", err)
	}
	if err := b.Enqueue(ctx, backend.Job{ID: "other", Run: "x"}); err != nil {
		t.Fatal(err)
	}
	d, err := b.DecodeMessage([]byte(encodeJob(backend.Job{ID: "dead", Run: "x", Node: "n1"}, 4)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, d, "too many deliveries"); err != nil {
		t.Fatal(err)
	}
	ps := poisoned(t, b)
	if len(ps) != 1 || ps[0].Reason != "too many deliveries" || !strings.Contains(ps[0].Message, `"id":"dead"`) {
		t.Errorf("poison queue = %+v, want the dead job with its reason", ps)
	}
	ds, err := b.Dequeue(ctx, 10, 5*time.Second, time.Second)
	if err != nil || len(ds) != 1 || ds[0].Job.ID != "other" {
		t.Errorf("Dequeue after a handle-less dead letter = %v, %v; want the other job still there", ds, err)
	}
}

// The Cosmos DB emulator over HTTPS, with its self-signed certificate: refused by
// default, accepted only with cosmos_insecure_tls=1.
func TestCosmosTLS(t *testing.T) {
	tlsConn := os.Getenv(envTLS)
	if tlsConn == "" {
		t.Fatalf("%s is not set: it names a Cosmos DB emulator served over HTTPS (a connection string).\n%s", envTLS, startHint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b, _, err := openFresh(ctx, "cosmos", tlsConn); err == nil {
		_ = cleanup(ctx, b)
		t.Fatal("opening the emulator's self-signed HTTPS endpoint succeeded without cosmos_insecure_tls=1")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("open without cosmos_insecure_tls: %v; want a certificate error", err)
	}
	b, _ := open(t, "cosmos", tlsConn, "cosmos_insecure_tls", "1")
	r := &backend.Run{ID: "r", Workflow: "wf", Status: backend.Running, Created: time.Now()}
	if ok, err := b.CreateRun(ctx, r, func(tx backend.Tx) error { return tx.Put("big", []byte(strings.Repeat("v", 500))) }); err != nil || !ok {
		t.Fatalf("CreateRun = %v, %v", ok, err)
	}
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil }); err != nil {
		t.Fatal(err)
	}
	b.vals.dropRun("r")
	_, vals, err := b.Read(ctx, "r", "big")
	if err != nil || len(vals["big"]) != 500 {
		t.Errorf("Read over TLS = %d bytes, %v", len(vals["big"]), err)
	}
	rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Completed})
	if err != nil || len(rs) != 1 {
		t.Errorf("ListRuns over TLS = %v, %v", rs, err)
	}
}
