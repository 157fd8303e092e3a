package aws

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// TestHandleMessage runs a workflow only through runtime.Worker.HandleMessage, the way
// a Lambda with an SQS event source does: raw messages are received with the SQS SDK,
// each body is handed to HandleMessage, the message is deleted when it returns nil and
// left (visible again after its visibility timeout) when it returns an error. Node b
// fails once and is retried (a new, delayed message); a malformed body is an error.
func TestHandleMessage(t *testing.T) {
	b, _ := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var aRuns, bRuns atomic.Int64
	wf := &runtime.Workflow{ID: "serverless", Version: "1", Start: []string{"a"}, Terminals: []string{"b"},
		Nodes: map[string]*runtime.Node{
			"a": {ID: "a", MaxAttempts: 1, Edges: []runtime.Edge{{Target: "b"}},
				Exec: func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
					aRuns.Add(1)
					var in int
					if err := runtime.Decode(t.RunInput(), &in); err != nil {
						return runtime.Output{}, err
					}
					return runtime.Encode(in + 1)
				}},
			"b": {ID: "b", MaxAttempts: 3, RetryDelay: 10 * time.Millisecond, Preds: []string{"a"}, Sources: []string{"a"},
				Exec: func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
					if bRuns.Add(1) == 1 {
						return runtime.Output{}, errors.New("transient failure")
					}
					var in int
					if err := t.DecodeOutput("a", &in); err != nil {
						return runtime.Output{}, err
					}
					return runtime.Encode(in * 10)
				}},
		}}
	c := runtime.New(b)
	w := runtime.NewWorker(c, runtime.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	w.Register(wf)

	// A malformed body first: HandleMessage must refuse it, so that the event source's
	// redrive policy moves it to the dead-letter queue.
	if _, err := b.sqs.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &b.queueURL, MessageBody: awssdk.String("not a job")}); err != nil {
		t.Fatal(err)
	}
	id, err := runtime.Start(ctx, c, wf, 4)
	if err != nil {
		t.Fatal(err)
	}

	var handled, failed, malformed int
	for {
		info, err := c.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status.Final() {
			if info.Status != backend.Completed || string(info.Result) != "50" {
				t.Fatalf("run ended %s with result %s (%s); want completed with 50", info.Status, info.Result, info.Reason)
			}
			break
		}
		out, err := b.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &b.queueURL,
			MaxNumberOfMessages: 10, WaitTimeSeconds: 1, VisibilityTimeout: 5})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			body := awssdk.ToString(m.Body)
			if err := w.HandleMessage(ctx, []byte(body)); err != nil {
				if body != "not a job" {
					t.Fatalf("HandleMessage(%s) = %v", body, err)
				}
				malformed++
				// What the redrive policy would do after maxReceiveCount receives.
				if _, err := b.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: &b.queueURL, ReceiptHandle: m.ReceiptHandle}); err != nil {
					t.Fatal(err)
				}
				failed++
				continue
			}
			handled++
			if _, err := b.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: &b.queueURL, ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if malformed != 1 {
		t.Errorf("HandleMessage refused %d malformed bodies, want 1", malformed)
	}
	if a, bb := aRuns.Load(), bRuns.Load(); a != 1 || bb != 2 {
		t.Errorf("node executions: a %d, b %d; want 1 and 2 (b fails once, then is retried)", a, bb)
	}
	// a, b's failed attempt, b's retry: three jobs, each handled once.
	if handled != 3 {
		t.Errorf("handled %d messages, want 3", handled)
	}
	t.Logf("handled %d messages, refused %d", handled, failed)
}

// TestDecodeMessageAndDeadLetter checks the serverless entry's pieces: Deliveries counts
// the receives a body carries, and DeadLetter of a delivery without a Handle sends the
// job to the dead-letter queue and deletes nothing.
func TestDecodeMessageAndDeadLetter(t *testing.T) {
	b, _ := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j := backend.Job{ID: "j1", Run: "r1", Workflow: "wf", Version: "1", Node: "n", Attempt: 2}
	d, err := b.DecodeMessage([]byte(encodeJob(j, 3)))
	if err != nil || d.Handle != nil || d.Deliveries != 4 || d.Job.ID != "j1" || d.Job.Attempt != 2 {
		t.Fatalf("DecodeMessage = %+v, %v; want job j1, 4 deliveries, no handle", d, err)
	}
	if _, err := b.DecodeMessage([]byte(`{"hello":1}`)); err == nil {
		t.Error("DecodeMessage of a body without id and run returned no error")
	}
	if err := b.DeadLetter(ctx, d, "poison"); err != nil {
		t.Fatal(err)
	}
	out, err := b.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &b.dlqURL, WaitTimeSeconds: 2,
		MessageAttributeNames: []string{"All"}})
	if err != nil || len(out.Messages) != 1 {
		t.Fatalf("dead-letter queue holds %v, %v; want the job", out, err)
	}
	got, err := DecodeJob(awssdk.ToString(out.Messages[0].Body))
	if err != nil || got.ID != "j1" {
		t.Errorf("dead-lettered job = %+v, %v", got, err)
	}
	if r := out.Messages[0].MessageAttributes["flowgen-reason"]; awssdk.ToString(r.StringValue) != "poison" {
		t.Errorf("dead-letter reason = %q, want poison", awssdk.ToString(r.StringValue))
	}
	if b.ScannedName() != "scannedItems" {
		t.Errorf("ScannedName = %q", b.ScannedName())
	}
}
