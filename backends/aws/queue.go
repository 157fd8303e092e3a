package aws

import (
	"context"
	"fmt"
	"strconv"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	stypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/flowgen/flowgen/runtime/backend"
)

// SQS limits.
const (
	maxBatch      = 10        // entries per batch call
	maxDelay      = 900       // seconds, DelaySeconds
	maxVisibility = 12 * 3600 // seconds, VisibilityTimeout
	maxPoll       = 4         // seconds, WaitTimeSeconds of one poll (SQS allows 20)
	maxReason     = 200_000   // bytes of a dead-letter reason kept
	earlyGrace    = 50 * time.Millisecond
)

// encodeJob is a job as an SQS message body: ids only, never outputs. prior counts the
// receives of earlier copies of the job (a copy is sent when a received job is handed
// back unseen, or re-delayed), added to ApproximateReceiveCount.
func encodeJob(j backend.Job, prior int) string { return backend.EncodeMessage(j, prior) }

// DecodeJob decodes an SQS message body written by this backend.
func DecodeJob(body string) (backend.Job, error) {
	j, _, err := decodeJob(body)
	return j, err
}

// decodeJob decodes a message body into the job and its prior count.
func decodeJob(body string) (backend.Job, int, error) {
	j, prior, err := backend.DecodeMessage([]byte(body))
	if err != nil {
		return j, 0, fmt.Errorf("aws: SQS %w", err)
	}
	return j, prior, nil
}

// DecodeMessage decodes an SQS message body written by this backend for a serverless
// trigger (backend.MessageDecoder): the Delivery has a nil Handle, and Deliveries counts
// the receives of earlier copies that the body carries, plus this one. The trigger's own
// receive count (the Lambda event's ApproximateReceiveCount) is not in the body; the
// queue's redrive policy (max_receives) bounds it.
func (b *Backend) DecodeMessage(body []byte) (*backend.Delivery, error) {
	j, prior, err := decodeJob(string(body))
	if err != nil {
		return nil, err
	}
	return &backend.Delivery{Job: j, Deliveries: prior + 1}, nil
}

// ScannedName names the reconciler's count of scanned runs "scannedItems"
// (backend.ScanNamer): the reconciler reads status items.
func (b *Backend) ScannedName() string { return "scannedItems" }

// handle is a Delivery's handle: the receipt of this receive, and the body for
// dead-lettering.
type handle struct {
	receipt string
	body    string
}

// delaySeconds is the SQS delay that makes a job visible no earlier than its NotBefore.
func delaySeconds(nb time.Time) int32 {
	if nb.IsZero() {
		return 0
	}
	d := time.Until(nb)
	if d <= 0 {
		return 0
	}
	s := int64((d + time.Second - 1) / time.Second)
	return int32(min(s, maxDelay))
}

// Enqueue sends jobs in batches of ten.
func (b *Backend) Enqueue(ctx context.Context, jobs ...backend.Job) error {
	if err := b.check(); err != nil {
		return err
	}
	return b.send(ctx, b.queueURL, jobs, 0)
}

// send sends jobs to queue; prior is the receives of earlier copies (see message.Prior).
func (b *Backend) send(ctx context.Context, queue string, jobs []backend.Job, prior int) error {
	for len(jobs) > 0 {
		n := min(len(jobs), maxBatch)
		entries := make([]stypes.SendMessageBatchRequestEntry, n)
		for i, j := range jobs[:n] {
			entries[i] = stypes.SendMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)),
				MessageBody: awssdk.String(encodeJob(j, prior)), DelaySeconds: delaySeconds(j.NotBefore)}
		}
		if err := b.sendBatch(ctx, queue, entries); err != nil {
			return err
		}
		jobs = jobs[n:]
	}
	return nil
}

// sendBatch sends entries, sending again the ones that failed for a reason worth retrying.
func (b *Backend) sendBatch(ctx context.Context, queue string, entries []stypes.SendMessageBatchRequestEntry) error {
	for try := 0; ; try++ {
		out, err := b.sqs.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &queue, Entries: entries})
		if err != nil {
			return fmt.Errorf("aws: send jobs to SQS: %w", err)
		}
		if len(out.Failed) == 0 {
			return nil
		}
		byID := map[string]stypes.SendMessageBatchRequestEntry{}
		for _, e := range entries {
			byID[*e.Id] = e
		}
		var again []stypes.SendMessageBatchRequestEntry
		for _, f := range out.Failed {
			if f.SenderFault || try >= 5 {
				return fmt.Errorf("aws: send a job to SQS: %s: %s", awssdk.ToString(f.Code), awssdk.ToString(f.Message))
			}
			again = append(again, byID[awssdk.ToString(f.Id)])
		}
		entries = again
		if err := jitter(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// Dequeue receives up to max jobs (at most ten per call), long polling for up to wait
// rounded up to whole seconds, in polls of at most maxPoll. The lease is the visibility
// timeout, rounded up to whole seconds.
//
// A receive is never abandoned: SQS takes messages (and counts a receive) even when
// the client hangs up, so a receive cut short by ctx would hide jobs for a lease and
// count a delivery nobody saw. When ctx ends, Dequeue lets the poll in flight finish
// (at most maxPoll) and hands what it received back to the queue as fresh copies that
// carry their receive counts (message.Prior), then returns ctx's error.
func (b *Backend) Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*backend.Delivery, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	deadline := time.Now().Add(wait)
	for {
		waitS := int32(0)
		if rem := time.Until(deadline); rem > 0 {
			waitS = int32(min((rem+time.Second-1)/time.Second, maxPoll))
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rctx := context.WithoutCancel(ctx)
		out, err := b.sqs.ReceiveMessage(rctx, &sqs.ReceiveMessageInput{
			QueueUrl:            &b.queueURL,
			MaxNumberOfMessages: int32(min(max, maxBatch)),
			VisibilityTimeout:   leaseSeconds(lease),
			WaitTimeSeconds:     waitS,
			// local-aws-sqs reads only the deprecated AttributeNames.
			AttributeNames:              []stypes.QueueAttributeName{"ApproximateReceiveCount"},
			MessageSystemAttributeNames: []stypes.MessageSystemAttributeName{stypes.MessageSystemAttributeNameApproximateReceiveCount},
		})
		if err != nil {
			return nil, fmt.Errorf("aws: receive jobs from SQS: %w", err)
		}
		if ctx.Err() != nil && len(out.Messages) > 0 {
			// The caller is gone: hand the jobs back, as copies that carry their
			// receive counts, so this receive is not counted as a lost lease.
			for _, m := range out.Messages {
				if err := b.handBack(rctx, m); err != nil {
					return nil, err
				}
			}
			return nil, ctx.Err()
		}
		var ds []*backend.Delivery
		for _, m := range out.Messages {
			d, err := b.delivery(rctx, m)
			if err != nil {
				return ds, err
			}
			if d != nil {
				ds = append(ds, d)
			}
		}
		if len(ds) > 0 || !time.Now().Before(deadline) {
			return ds, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// delivery turns a received message into a delivery. It returns nil for a message that
// is not due yet (sent again with the remaining delay) or not a job (dead-lettered).
func (b *Backend) delivery(ctx context.Context, m stypes.Message) (*backend.Delivery, error) {
	body := awssdk.ToString(m.Body)
	h := handle{receipt: awssdk.ToString(m.ReceiptHandle), body: body}
	j, prior, err := decodeJob(body)
	if err != nil {
		return nil, b.deadLetter(ctx, h, err.Error())
	}
	n, _ := strconv.Atoi(m.Attributes["ApproximateReceiveCount"])
	n = max(n, 1) + prior
	if rem := time.Until(j.NotBefore); rem > 0 {
		if rem > earlyGrace {
			// Delayed beyond SQS's 15 minutes (or a clock ahead of SQS's): send it
			// again with the remaining delay, then drop this copy.
			if err := b.send(ctx, b.queueURL, []backend.Job{j}, n-1); err != nil {
				return nil, err
			}
			return nil, b.deleteOne(ctx, h.receipt)
		}
		time.Sleep(rem)
	}
	return &backend.Delivery{Job: j, Deliveries: n, Handle: h}, nil
}

// handBack returns a received message unseen: a copy that carries its earlier
// receives, then the delete of the original.
func (b *Backend) handBack(ctx context.Context, m stypes.Message) error {
	j, prior, err := decodeJob(awssdk.ToString(m.Body))
	if err != nil {
		return b.deadLetter(ctx, handle{receipt: awssdk.ToString(m.ReceiptHandle), body: awssdk.ToString(m.Body)}, err.Error())
	}
	n, _ := strconv.Atoi(m.Attributes["ApproximateReceiveCount"])
	if err := b.send(ctx, b.queueURL, []backend.Job{j}, max(n, 1)-1+prior); err != nil {
		return err
	}
	return b.deleteOne(ctx, awssdk.ToString(m.ReceiptHandle))
}

func leaseSeconds(lease time.Duration) int32 {
	s := int64((lease + time.Second - 1) / time.Second)
	return int32(min(max(s, 1), maxVisibility))
}

func handleOf(d *backend.Delivery) (handle, error) {
	h, ok := d.Handle.(handle)
	if !ok {
		return handle{}, fmt.Errorf("aws: delivery of job %s was not received from this backend", d.Job.ID)
	}
	return h, nil
}

// Ack deletes delivered jobs, in batches of ten. A receipt that is no longer valid (the
// lease expired and the job was received again) is not an error.
func (b *Backend) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	for len(ds) > 0 {
		n := min(len(ds), maxBatch)
		entries := make([]stypes.DeleteMessageBatchRequestEntry, n)
		for i, d := range ds[:n] {
			h, err := handleOf(d)
			if err != nil {
				return err
			}
			entries[i] = stypes.DeleteMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)), ReceiptHandle: &h.receipt}
		}
		out, err := b.sqs.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &b.queueURL, Entries: entries})
		if err != nil {
			return fmt.Errorf("aws: delete jobs from SQS: %w", err)
		}
		for _, f := range out.Failed {
			if !f.SenderFault {
				return fmt.Errorf("aws: delete a job from SQS: %s: %s", awssdk.ToString(f.Code), awssdk.ToString(f.Message))
			}
		}
		ds = ds[n:]
	}
	return nil
}

func (b *Backend) deleteOne(ctx context.Context, receipt string) error {
	_, err := b.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: &b.queueURL, ReceiptHandle: &receipt})
	if err != nil && !isCode(err, "ReceiptHandleIsInvalid", "InvalidParameterValue", "AWS.SimpleQueueService.NonExistentQueue") {
		return fmt.Errorf("aws: delete a job from SQS: %w", err)
	}
	return nil
}

// Requeue sends next, then deletes the delivered job. A crash between the two leaves
// both; the runtime tolerates the duplicate.
func (b *Backend) Requeue(ctx context.Context, d *backend.Delivery, next backend.Job) error {
	if err := b.check(); err != nil {
		return err
	}
	h, err := handleOf(d)
	if err != nil {
		return err
	}
	if err := b.send(ctx, b.queueURL, []backend.Job{next}, 0); err != nil {
		return err
	}
	return b.deleteOne(ctx, h.receipt)
}

// Extend renews leases with ChangeMessageVisibilityBatch. Jobs whose lease already
// expired are left alone.
func (b *Backend) Extend(ctx context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	secs := leaseSeconds(lease)
	for len(ds) > 0 {
		n := min(len(ds), maxBatch)
		entries := make([]stypes.ChangeMessageVisibilityBatchRequestEntry, n)
		for i, d := range ds[:n] {
			h, err := handleOf(d)
			if err != nil {
				return err
			}
			entries[i] = stypes.ChangeMessageVisibilityBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)),
				ReceiptHandle: &h.receipt, VisibilityTimeout: secs}
		}
		out, err := b.sqs.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &b.queueURL, Entries: entries})
		if err != nil {
			return fmt.Errorf("aws: extend leases in SQS: %w", err)
		}
		for _, f := range out.Failed {
			if !f.SenderFault {
				return fmt.Errorf("aws: extend a lease in SQS: %s: %s", awssdk.ToString(f.Code), awssdk.ToString(f.Message))
			}
		}
		ds = ds[n:]
	}
	return nil
}

// DeadLetter sends the job to the dead-letter queue with the reason (message attribute
// flowgen-reason), then deletes it. Without a dead-letter queue it is only deleted. A
// delivery without a Handle (from DecodeMessage) is only sent to the dead-letter queue:
// the serverless trigger owns the message and deletes it.
func (b *Backend) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	if err := b.check(); err != nil {
		return err
	}
	if d.Handle == nil {
		return b.deadLetter(ctx, handle{body: encodeJob(d.Job, max(d.Deliveries-1, 0))}, reason)
	}
	h, err := handleOf(d)
	if err != nil {
		return err
	}
	return b.deadLetter(ctx, h, reason)
}

func (b *Backend) deadLetter(ctx context.Context, h handle, reason string) error {
	if b.dlqURL != "" {
		if len(reason) > maxReason {
			reason = reason[:maxReason]
		}
		if reason == "" {
			reason = "(no reason)"
		}
		_, err := b.sqs.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &b.dlqURL, MessageBody: &h.body,
			MessageAttributes: map[string]stypes.MessageAttributeValue{
				"flowgen-reason": {DataType: awssdk.String("String"), StringValue: &reason},
			}})
		if err != nil {
			return fmt.Errorf("aws: send a job to the dead-letter queue: %w", err)
		}
	}
	if h.receipt == "" {
		return nil
	}
	return b.deleteOne(ctx, h.receipt)
}
