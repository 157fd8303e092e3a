package runtime

import (
	"context"
	"fmt"

	"github.com/flowgen/flowgen/runtime/backend"
)

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
	return w.handle(ctx, d)
}
