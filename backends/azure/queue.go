package azure

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Azure Queue Storage limits.
const (
	maxBatch      = 32            // messages per dequeue call
	maxVisibility = 7 * 24 * 3600 // seconds, visibility timeout of a message
	maxErr        = 16 << 10      // bytes of Job.Err carried in a message
	maxReason     = 24 << 10      // bytes of a dead-letter reason kept
	earlyGrace    = 50 * time.Millisecond
	minPoll       = 10 * time.Millisecond  // first pause of a Dequeue that found nothing
	maxPoll       = 250 * time.Millisecond // longest pause between two polls
)

// encodeJob is a job as a queue message: ids only, never outputs, Job.Err cut to fit.
// prior counts the deliveries of earlier copies of the job (a copy is sent when a
// dequeued job is handed back unseen, or re-delayed), added to DequeueCount.
func encodeJob(j backend.Job, prior int) string {
	if len(j.Err) > maxErr {
		j.Err = j.Err[:maxErr] + "…"
	}
	return backend.EncodeMessage(j, prior)
}

// DecodeJob decodes a queue message written by this backend: its JSON text, or that
// text base64-encoded (as an Azure Functions queue trigger with the default
// messageEncoding may hand it over).
func DecodeJob(body string) (backend.Job, error) {
	j, _, err := decodeJob(body)
	return j, err
}

func decodeJob(body string) (backend.Job, int, error) {
	data := []byte(body)
	if len(data) > 0 && data[0] != '{' {
		if dec, err := base64.StdEncoding.DecodeString(body); err == nil {
			data = dec
		}
	}
	j, prior, err := backend.DecodeMessage(data)
	if err != nil {
		return j, 0, fmt.Errorf("azure: queue %w", err)
	}
	return j, prior, nil
}

// DecodeMessage decodes a message body for Worker.HandleMessage
// (backend.MessageDecoder). Deliveries counts the copies' earlier deliveries plus this
// one; the trigger's own dequeue count is not in the body.
func (b *Backend) DecodeMessage(body []byte) (*backend.Delivery, error) {
	j, prior, err := decodeJob(string(body))
	if err != nil {
		return nil, err
	}
	return &backend.Delivery{Job: j, Deliveries: prior + 1}, nil
}

// handle is a Delivery's handle. Extend replaces the pop receipt, so it is guarded.
type handle struct {
	mu      sync.Mutex
	id      string
	receipt string
	body    string
}

func (h *handle) get() (id, receipt string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.id, h.receipt
}

func handleOf(d *backend.Delivery) (*handle, error) {
	h, ok := d.Handle.(*handle)
	if !ok || h == nil {
		return nil, fmt.Errorf("azure: delivery of job %s was not dequeued from this backend", d.Job.ID)
	}
	return h, nil
}

// handlesOf returns the handles of ds, or the error of the first that has none.
func handlesOf(ds []*backend.Delivery) ([]*handle, error) {
	hs := make([]*handle, len(ds))
	for i, d := range ds {
		h, err := handleOf(d)
		if err != nil {
			return nil, err
		}
		hs[i] = h
	}
	return hs, nil
}

// visibility is the visibility timeout that makes a job visible no earlier than its
// NotBefore, in whole seconds, at most seven days (a longer delay is re-delayed when the
// job surfaces).
func visibility(nb time.Time) int32 {
	if nb.IsZero() {
		return 0
	}
	d := time.Until(nb)
	if d <= 0 {
		return 0
	}
	return int32(min(int64((d+time.Second-1)/time.Second), maxVisibility))
}

func leaseSeconds(lease time.Duration) int32 {
	s := int64((lease + time.Second - 1) / time.Second)
	return int32(min(max(s, 1), maxVisibility))
}

// noExpiry is the time-to-live of every message: never, so that a long delay or a
// backlog loses no job.
var noExpiry = int32(-1)

// Enqueue sends jobs, one message each (the service has no batch send), in parallel.
func (b *Backend) Enqueue(ctx context.Context, jobs ...backend.Job) error {
	if err := b.check(); err != nil {
		return err
	}
	if err := b.send(ctx, b.queue, jobs, 0); err != nil {
		return err
	}
	b.kick()
	return nil
}

// kick ends the pause of this process's Dequeue calls: there are jobs.
func (b *Backend) kick() {
	b.idle.reset()
	b.wake.kick()
}

// send sends jobs to q; prior is the deliveries of earlier copies (message.Prior).
func (b *Backend) send(ctx context.Context, q *azqueue.QueueClient, jobs []backend.Job, prior int) error {
	one := func(j backend.Job) error {
		vis := visibility(j.NotBefore)
		_, err := q.EnqueueMessage(ctx, encodeJob(j, prior), &azqueue.EnqueueMessageOptions{
			TimeToLive: &noExpiry, VisibilityTimeout: &vis})
		if err != nil {
			return fmt.Errorf("azure: send job %s to the queue: %w", j.ID, err)
		}
		return nil
	}
	if len(jobs) == 1 {
		return one(jobs[0])
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			errs[i] = one(j)
			<-sem
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Dequeue takes up to max jobs (at most 32 per call) with the lease as their
// visibility timeout, in whole seconds. Queue Storage has no long poll: after a poll
// that found nothing, this process polls again only after a pause that grows from 10ms
// to 250ms with every empty poll (shared by the process's Dequeue calls, so an idle
// worker costs about four calls a second), until wait is over; an Enqueue of this
// process ends the pause at once. A poll that finds fewer jobs than it asked for is
// followed by the shortest pause, a full one by none.
//
// A dequeue in flight is never abandoned: the service hides the messages (and counts
// a delivery) even when the client hangs up. When ctx ends, Dequeue lets the call
// finish and hands what it took back to the queue as fresh copies that carry their
// delivery counts (message.Prior), then returns ctx's error.
func (b *Backend) Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*backend.Delivery, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	deadline := time.Now().Add(wait)
	// woken is closed by an Enqueue of this process after the last poll began (or
	// after this call began), which may have missed its jobs.
	woken := b.wake.wait()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if next := b.idle.next(); time.Now().Before(next) {
			// Polled in vain a moment ago: wait for the pause to end, an Enqueue of
			// this process, ctx, or the end of wait.
			d := time.Until(next)
			last := !deadline.After(next)
			if last {
				d = time.Until(deadline)
			}
			if d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				case <-woken:
					t.Stop()
					b.idle.reset()
					last = false
				case <-t.C:
				}
			}
			if err := b.check(); err != nil {
				return nil, err
			}
			if last {
				return nil, nil
			}
			continue
		}
		woken = b.wake.wait()
		rctx := context.WithoutCancel(ctx)
		n := int32(min(max, maxBatch))
		vis := leaseSeconds(lease)
		out, err := b.queue.DequeueMessages(rctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n, VisibilityTimeout: &vis})
		if err != nil {
			if b.closed.Load() {
				return nil, backend.ErrClosed
			}
			return nil, fmt.Errorf("azure: dequeue jobs: %w", err)
		}
		switch {
		case len(out.Messages) == 0:
			b.idle.empty()
		case len(out.Messages) < int(n):
			b.idle.drained()
		default:
			b.idle.reset()
		}
		if ctx.Err() != nil && len(out.Messages) > 0 {
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
	}
}

// idleState is when this process polls the queue next after polls that found nothing.
type idleState struct {
	mu    sync.Mutex
	pause time.Duration
	at    time.Time // when the pause ends
}

func (s *idleState) next() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at
}

// empty notes a poll that found nothing: the pause doubles.
func (s *idleState) empty() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pause = min(max(2*s.pause, minPoll), maxPoll)
	s.at = time.Now().Add(s.pause)
}

// drained notes a poll that found fewer jobs than it asked for: the queue is empty for
// now, so the next poll waits the shortest pause (an Enqueue of this process ends it),
// instead of asking in vain at once.
func (s *idleState) drained() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pause = minPoll
	s.at = time.Now().Add(s.pause)
}

// reset notes jobs: the next poll may come at once.
func (s *idleState) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pause, s.at = 0, time.Time{}
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// delivery turns a dequeued message into a delivery. It returns nil for a message that
// is not due yet (sent again with the remaining delay), not a job, or delivered more
// than the backstop allows (both dead-lettered).
func (b *Backend) delivery(ctx context.Context, m *azqueue.DequeuedMessage) (*backend.Delivery, error) {
	body := str(m.MessageText)
	h := &handle{id: str(m.MessageID), receipt: str(m.PopReceipt), body: body}
	j, prior, err := decodeJob(body)
	if err != nil {
		slog.Warn("azure: moving a message that is not a flowgen job to the poison queue", "queue", b.opts.Queue, "err", err)
		return nil, b.deadLetter(ctx, h, body, err.Error())
	}
	n := prior + 1
	if m.DequeueCount != nil {
		n = prior + int(max(*m.DequeueCount, 1))
	}
	if rem := time.Until(j.NotBefore); rem > 0 {
		if rem > earlyGrace {
			// Delayed beyond the seven days a visibility timeout allows (or a clock
			// ahead of the service's): send it again with the remaining delay, then
			// drop this copy.
			if err := b.send(ctx, b.queue, []backend.Job{j}, n-1); err != nil {
				return nil, err
			}
			return nil, b.deleteOne(ctx, h)
		}
		time.Sleep(rem)
	}
	d := &backend.Delivery{Job: j, Deliveries: n, Handle: h}
	if b.opts.MaxDeliveries > 0 && n > b.opts.MaxDeliveries {
		return nil, b.deadLetter(ctx, h, body, fmt.Sprintf("delivered %d times, over the backend's limit of %d (max_deliveries)", n, b.opts.MaxDeliveries))
	}
	return d, nil
}

// handBack returns a dequeued message unseen: a copy that carries its earlier
// deliveries, then the delete of the original.
func (b *Backend) handBack(ctx context.Context, m *azqueue.DequeuedMessage) error {
	h := &handle{id: str(m.MessageID), receipt: str(m.PopReceipt), body: str(m.MessageText)}
	j, prior, err := decodeJob(h.body)
	if err != nil {
		return b.deadLetter(ctx, h, h.body, err.Error())
	}
	n := int64(1)
	if m.DequeueCount != nil {
		n = max(*m.DequeueCount, 1)
	}
	if err := b.send(ctx, b.queue, []backend.Job{j}, int(n)-1+prior); err != nil {
		return err
	}
	return b.deleteOne(ctx, h)
}

// Ack deletes delivered jobs with their pop receipts, in parallel. A message already
// gone, or dequeued again by another worker after its lease expired, is not an error.
func (b *Backend) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	hs, err := handlesOf(ds)
	if err != nil {
		return err
	}
	return b.each(len(hs), func(i int) error { return b.deleteOne(ctx, hs[i]) })
}

// each runs fn(0..n-1), in parallel when n > 1, and joins the errors.
func (b *Backend) each(n int, fn func(int) error) error {
	if n == 1 {
		return fn(0)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (b *Backend) deleteOne(ctx context.Context, h *handle) error {
	id, receipt := h.get()
	_, err := b.queue.DeleteMessage(ctx, id, receipt, nil)
	if err != nil && !gone(err) {
		return fmt.Errorf("azure: delete a job from the queue: %w", err)
	}
	return nil
}

// gone reports whether err says the message or this receipt of it is no longer valid.
func gone(err error) bool {
	return queueerror.HasCode(err, queueerror.MessageNotFound, queueerror.PopReceiptMismatch) ||
		statusCode(err) == 404
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
	if err := b.send(ctx, b.queue, []backend.Job{next}, 0); err != nil {
		return err
	}
	b.kick()
	return b.deleteOne(ctx, h)
}

// Extend renews leases with UpdateMessage, which returns a new pop receipt that the
// delivery's handle keeps. Jobs whose lease already expired are left alone.
func (b *Backend) Extend(ctx context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	vis := leaseSeconds(lease)
	hs, err := handlesOf(ds)
	if err != nil {
		return err
	}
	return b.each(len(hs), func(i int) error {
		h := hs[i]
		h.mu.Lock()
		defer h.mu.Unlock()
		out, err := b.queue.UpdateMessage(ctx, h.id, h.receipt, h.body, &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis})
		if err != nil {
			if gone(err) {
				return nil
			}
			return fmt.Errorf("azure: extend the lease of a job: %w", err)
		}
		if out.PopReceipt != nil {
			h.receipt = *out.PopReceipt
		}
		return nil
	})
}

// poisonMessage is what the poison queue holds: the job's message and why it is there.
type poisonMessage struct {
	Message string `json:"message"`
	Reason  string `json:"reason"`
	At      string `json:"at"`
}

// DeadLetter moves the job to the poison queue with the reason, then deletes it. A
// delivery without a handle (Worker.HandleMessage) is only stored in the poison queue:
// the trigger owns its message.
func (b *Backend) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	if err := b.check(); err != nil {
		return err
	}
	if d.Handle == nil {
		return b.deadLetter(ctx, nil, encodeJob(d.Job, d.Deliveries-1), reason)
	}
	h, err := handleOf(d)
	if err != nil {
		return err
	}
	return b.deadLetter(ctx, h, h.body, reason)
}

func (b *Backend) deadLetter(ctx context.Context, h *handle, body, reason string) error {
	if len(reason) > maxReason {
		reason = reason[:maxReason] + "…"
	}
	if reason == "" {
		reason = "(no reason)"
	}
	data, _ := json.Marshal(poisonMessage{Message: body, Reason: reason, At: time.Now().UTC().Format(time.RFC3339Nano)})
	if _, err := b.poison.EnqueueMessage(ctx, string(data), &azqueue.EnqueueMessageOptions{TimeToLive: &noExpiry}); err != nil {
		return fmt.Errorf("azure: send a job to the poison queue %s: %w", b.opts.Poison, err)
	}
	if h == nil {
		return nil
	}
	return b.deleteOne(ctx, h)
}
