package runtime

import (
	"context"
	"fmt"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// notDueGrace is how early a job may surface and still run: queues count delays in
// whole seconds.
const notDueGrace = time.Second

// HandleMessage runs the job carried by one queue message body, for a serverless
// function that a queue triggers instead of a polling worker: an AWS Lambda with an SQS
// event source, an Azure Functions queue trigger. The trigger received the message and
// owns it: it deletes it when HandleMessage returns nil, and makes it visible again when
// HandleMessage returns an error (report it as a partial batch failure for that message).
// A body that is not a flowgen job is an error too, so the trigger's redrive policy
// moves it to its dead-letter queue. Retries with backoff, fallbacks and dead letters work as in Run: a retry is
// a new message, and a job that keeps failing is dead-lettered by the backend. The
// trigger's visibility timeout must exceed the longest node, since nothing extends it.
//
// The backend must implement backend.MessageDecoder (aws:// and azure:// do).
func (w *Worker) HandleMessage(ctx context.Context, body []byte) error {
	dec, ok := w.c.b.(backend.MessageDecoder)
	if !ok {
		return fmt.Errorf("flowgen: HandleMessage: the %T backend cannot decode queue messages", w.c.b)
	}
	d, err := dec.DecodeMessage(body)
	if err != nil {
		// The trigger's redrive policy moves the message to its dead-letter queue.
		w.log.Error("flowgen: message is not a flowgen job", "err", err)
		return err
	}
	d.Handle = nil
	if wait := time.Until(d.Job.NotBefore); wait > notDueGrace {
		// Delayed longer than the queue can delay a message (15 minutes on SQS, 7 days
		// on Azure), it surfaced early: send it again with the rest of its delay.
		if err := w.c.b.Enqueue(ctx, d.Job); err != nil {
			return fmt.Errorf("flowgen: postpone a job due in %v: %w", wait.Round(time.Second), err)
		}
		return nil
	}
	return w.handle(ctx, d)
}
