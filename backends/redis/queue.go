package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// lease is a Delivery's handle: the job's member in the leased set, which holds the
// number of the delivery. A holder whose lease expired keeps a member that is no
// longer leased once the job is delivered again (or found expired), so it cannot ack,
// requeue, extend or dead-letter the job of the next holder.
type lease struct {
	member string
}

func nowMs() int64 { return time.Now().UnixMilli() }

// pushArgs appends the (sequence, not-before ms, body) triple of each job to args.
func (b *Backend) pushArgs(args []any, jobs []backend.Job) []any {
	for i := range jobs {
		j := &jobs[i]
		var nb int64
		if !j.NotBefore.IsZero() {
			// Rounded up: a job is never visible before its time.
			nb = (j.NotBefore.UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
		}
		args = append(args, b.sequence(), nb, encodeJob(j))
	}
	return args
}

// sequence returns the sequence number that starts a new job's member, in 16 hex
// digits: this process's clock in milliseconds shifted left by 16 bits, kept strictly
// increasing, so that the ready set pops jobs of equal priority in the order they were
// pushed (by this process exactly, across processes to the millisecond of their
// clocks).
func (b *Backend) sequence() string {
	now := uint64(time.Now().UnixMilli()) << 16
	for {
		last := b.seq.Load()
		next := max(now, last+1)
		if b.seq.CompareAndSwap(last, next) {
			var buf [16]byte
			const digits = "0123456789abcdef"
			for i := 15; i >= 0; i-- {
				buf[i] = digits[next&15]
				next >>= 4
			}
			return string(buf[:])
		}
	}
}

func (b *Backend) pushKeys(extra ...string) []string {
	return append([]string{b.k.ready, b.k.delayed, b.k.waiting}, extra...)
}

// Enqueue adds jobs; each becomes visible at its NotBefore.
func (b *Backend) Enqueue(ctx context.Context, jobs ...backend.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	if b.closed.Load() {
		return errClosed
	}
	args := b.pushArgs(append(make([]any, 0, 3+3*len(jobs)), nowMs(), b.k.wake, len(jobs)), jobs)
	_, err := b.pipe.eval(ctx, enqueueScript, b.pushKeys(), args)
	return err
}

// promoteEvery is how often, in milliseconds, a busy Dequeue moves due delayed jobs and
// expired leases to the ready set (an idle one does it on every call).
const promoteEvery = 10

// snapshotFields is the largest run hash, in fields, that Dequeue returns with a job.
const snapshotFields = 128

// Dequeue leases up to max visible jobs, highest priority first and FIFO among equals,
// waiting up to wait for the first one. While it waits it is woken by the pub/sub
// notification of a push, by the due time of the next delayed job or lease deadline,
// and at least every poll interval. The jobs come with snapshots of their runs, which
// the Reads of their inputs use (see the package documentation).
func (b *Backend) Dequeue(ctx context.Context, max int, leaseFor, wait time.Duration) ([]*backend.Delivery, error) {
	if max < 1 {
		return nil, nil
	}
	leaseMs := max64(leaseFor.Milliseconds(), 1)
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if b.closed.Load() {
			return nil, errClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if ds := b.handoff.take(max); len(ds) > 0 {
			return ds, nil
		}
		// The call wants jobs from this process's commits while it asks Redis too:
		// otherwise the commits that end meanwhile publish a wake-up, which sends
		// every waiting process to Redis, where their own commits publish again.
		var handed <-chan struct{}
		if wait > 0 {
			handed = b.handoff.wait(max, leaseFor)
		}
		unwait := func() {
			if handed != nil {
				b.handoff.unwait(max)
				handed = nil
			}
		}
		woken := b.notify.wakeCh()
		next, idle := b.idle.get(woken)
		if !idle {
			now := nowMs()
			promote := "0"
			if last := b.promoted.Load(); now-last >= promoteEvery {
				promote = "1"
				b.promoted.Store(now)
			}
			// Registered as waiting until well after this call could wait, so that
			// the next calls can wait without asking again (see idleState).
			until := now + max64(wait.Milliseconds(), b.opts.Poll.Milliseconds()) + 2000
			if wait <= 0 {
				until = 0 // a Dequeue that does not wait does not register
			}
			args, acked := b.takeAcks([]any{now, max, leaseMs, b.opts.MaxDeliveries, b.proc, promote,
				b.k.prefix + "run:{", snapshotFields}, until)
			res, err := b.pipe.eval(ctx, dequeueScript,
				[]string{b.k.ready, b.k.delayed, b.k.leased, b.k.waiting, b.k.dead}, args)
			if err != nil {
				unwait()
				b.untakeAcks(acked)
				return b.handoff.take(max), err
			}
			out, due, err := b.deliveries(ctx, res)
			if err != nil || len(out) > 0 {
				unwait()
				b.idle.set(nil, time.Time{}, 0)
				return append(out, b.handoff.take(max-len(out))...), err
			}
			if until > 0 {
				b.idle.set(woken, due, until-1000)
			}
			next = due
		}
		t := time.Now()
		if !t.Before(deadline) {
			unwait()
			return b.handoff.take(max), nil
		}
		until := t.Add(b.opts.Poll)
		if deadline.Before(until) {
			until = deadline
		}
		if !next.IsZero() && next.Before(until) {
			until = next
		}
		if timer == nil {
			timer = time.NewTimer(until.Sub(t))
		} else {
			timer.Reset(until.Sub(t))
		}
		select {
		case <-ctx.Done():
		case <-b.stop:
		case <-woken:
		case <-handed:
		case <-timer.C:
			b.idle.set(nil, time.Time{}, 0) // the poll: ask Redis again
		}
		unwait()
		if err := ctx.Err(); err != nil {
			return b.handoff.take(max), nil // jobs handed over meanwhile are not lost
		}
	}
}

// idleState remembers that this process found the queue empty and registered as
// waiting: until a wake-up arrives (any push of a ready job publishes one while the
// registration lasts), or the registration is about to lapse, or a delayed job or a
// lease falls due, the queue has nothing for it, and Dequeue waits without asking.
type idleState struct {
	mu    sync.Mutex
	wake  <-chan struct{} // the wake-up channel of the empty check; nil: not idle
	next  time.Time       // when the next delayed job or lease falls due
	until int64           // when the registration is about to lapse (unix ms)
}

func (s *idleState) set(wake <-chan struct{}, next time.Time, until int64) {
	s.mu.Lock()
	s.wake, s.next, s.until = wake, next, until
	s.mu.Unlock()
}

// get reports whether the queue is known empty (and when something falls due).
func (s *idleState) get(current <-chan struct{}) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wake == nil || s.wake != current || nowMs() >= s.until || (!s.next.IsZero() && !time.Now().Before(s.next)) {
		return time.Time{}, false
	}
	return s.next, true
}

// deliveries decodes the dequeue script's reply: the deliveries and the snapshots of
// their runs, or when there are none, when the next delayed job or lease falls due
// (zero if never). A job whose body cannot be decoded is dead-lettered and left out.
func (b *Backend) deliveries(ctx context.Context, res any) ([]*backend.Delivery, time.Time, error) {
	vals, ok := res.([]any)
	if !ok || len(vals) < 2 {
		return nil, time.Time{}, fmt.Errorf("redis: dequeue: unexpected reply %T", res)
	}
	if toInt(vals[0]) == 0 {
		var next time.Time
		for _, v := range vals[1:] {
			if ms := toInt(v); ms >= 0 && (next.IsZero() || time.UnixMilli(ms).Before(next)) {
				next = time.UnixMilli(ms)
			}
		}
		return nil, next, nil
	}
	out, err := b.leased(ctx, vals[1:])
	return out, time.Time{}, err
}

// leased decodes what the lease function of the scripts returned: the number of jobs,
// each one's leased member, delivery number and body, then the snapshots of their
// runs. A job whose body cannot be decoded is dead-lettered and left out.
func (b *Backend) leased(ctx context.Context, vals []any) ([]*backend.Delivery, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	n := int(toInt(vals[0]))
	if n < 0 || len(vals) < 1+3*n {
		return nil, fmt.Errorf("redis: unexpected reply of %d values for %d leased jobs", len(vals), n)
	}
	for i := 1 + 3*n; i+1 < len(vals); i += 2 {
		id, _ := vals[i].(string)
		b.snapshot(id, vals[i+1])
	}
	out := make([]*backend.Delivery, 0, n)
	for i := 1; i < 1+3*n; i += 3 {
		m, _ := vals[i].(string)
		dn := toInt(vals[i+1])
		body, _ := vals[i+2].(string)
		d := &backend.Delivery{Deliveries: int(dn), Handle: lease{member: m}}
		job, err := decodeJob([]byte(body))
		if err != nil {
			if derr := b.DeadLetter(ctx, d, "cannot decode the job: "+err.Error()); derr != nil {
				return out, derr
			}
			continue
		}
		d.Job = job
		out = append(out, d)
	}
	return out, nil
}

func handle(d *backend.Delivery) (lease, error) {
	l, ok := d.Handle.(lease)
	if !ok {
		return l, fmt.Errorf("redis: delivery of job %s was not made by the redis backend", d.Job.ID)
	}
	return l, nil
}

// Ack removes delivered jobs for good; jobs whose lease was lost are left alone.
//
// Acks are applied in the background: they go out with the next Dequeue of this
// process, or after 2ms by themselves when no Dequeue comes, and Close applies the
// last ones. A node's completion is recorded before its job is acked, so an ack lost
// to a crash only costs a duplicate delivery, which finds the completion.
func (b *Backend) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	ls := make([]lease, len(ds))
	for i, d := range ds {
		l, err := handle(d)
		if err != nil {
			return err
		}
		ls[i] = l
	}
	if b.closed.Load() {
		return b.ack(ctx, ls)
	}
	b.acks.Lock()
	first := len(b.acks.pending) == 0
	b.acks.pending = append(b.acks.pending, ls...)
	b.acks.Unlock()
	if first { // the sender has nothing to do until now
		select {
		case b.acks.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// acks are the acks not yet sent.
type acks struct {
	sync.Mutex
	pending []lease
	kick    chan struct{}
}

// ackDelay is how long acks wait for a Dequeue to take them along before they are
// sent by themselves.
const ackDelay = 2 * time.Millisecond

// maxAcks bounds the acks sent in one script call.
const maxAcks = 256

// takeAcks returns up to maxAcks pending acks: args, then their count, then extra,
// then their members.
func (b *Backend) takeAcks(args []any, extra ...any) ([]any, []lease) {
	ls := b.pendingAcks()
	args = append(append(args, len(ls)), extra...)
	for _, l := range ls {
		args = append(args, l.member)
	}
	return args, ls
}

// pendingAcks takes up to maxAcks pending acks.
func (b *Backend) pendingAcks() []lease {
	b.acks.Lock()
	defer b.acks.Unlock()
	n := min(len(b.acks.pending), maxAcks)
	if n == 0 {
		return nil
	}
	ls := slices.Clone(b.acks.pending[:n])
	b.acks.pending = b.acks.pending[n:]
	if len(b.acks.pending) == 0 {
		b.acks.pending = nil
	}
	return ls
}

// untakeAcks puts back acks whose script call failed, to be sent again.
func (b *Backend) untakeAcks(ls []lease) {
	if len(ls) == 0 {
		return
	}
	b.acks.Lock()
	b.acks.pending = append(ls, b.acks.pending...)
	b.acks.Unlock()
}

// ack sends acks now.
func (b *Backend) ack(ctx context.Context, ls []lease) error {
	args := make([]any, 0, len(ls))
	for _, l := range ls {
		args = append(args, l.member)
	}
	_, err := b.pipe.eval(ctx, ackScript, []string{b.k.leased}, args)
	return err
}

// sendAcks sends pending acks as they come, until the backend closes, then the last.
func (b *Backend) sendAcks() {
	defer b.bg.Done()
	ctx := context.Background()
	flush := func() bool {
		_, ls := b.takeAcks(nil)
		if ls == nil {
			return true
		}
		if err := b.ack(ctx, ls); err != nil {
			b.untakeAcks(ls)
			return false
		}
		return true
	}
	for {
		select {
		case <-b.stop:
			for range 3 {
				b.acks.Lock()
				n := len(b.acks.pending)
				b.acks.Unlock()
				if n == 0 || !flush() {
					return
				}
			}
			return
		case <-b.acks.kick:
		}
		// Give the next Dequeue, which usually follows an ack at once, a moment to
		// take the acks along.
		select {
		case <-time.After(ackDelay):
		case <-b.stop:
		}
		for {
			b.acks.Lock()
			n := len(b.acks.pending)
			b.acks.Unlock()
			if n == 0 {
				break
			}
			if !flush() {
				select { // Redis is away: try again later, or on the next kick
				case <-time.After(100 * time.Millisecond):
				case <-b.stop:
				}
				break
			}
		}
	}
}

// Requeue atomically replaces a delivered job with next, if its lease is still held.
func (b *Backend) Requeue(ctx context.Context, d *backend.Delivery, next backend.Job) error {
	l, err := handle(d)
	if err != nil {
		return err
	}
	args := b.pushArgs([]any{l.member, nowMs(), b.k.wake}, []backend.Job{next})
	_, err = b.pipe.eval(ctx, requeueScript, b.pushKeys(b.k.leased), args)
	return err
}

// Extend renews the leases still held.
func (b *Backend) Extend(ctx context.Context, leaseFor time.Duration, ds ...*backend.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	args := make([]any, 0, 1+len(ds))
	args = append(args, time.Now().Add(leaseFor).UnixMilli())
	for _, d := range ds {
		l, err := handle(d)
		if err != nil {
			return err
		}
		args = append(args, l.member)
	}
	_, err := b.pipe.eval(ctx, extendScript, []string{b.k.leased}, args)
	return err
}

// DeadLetter moves a delivered job to the dead-letter hash with the reason, if its
// lease is still held.
func (b *Backend) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	l, err := handle(d)
	if err != nil {
		return err
	}
	_, err = b.pipe.eval(ctx, deadletterScript, []string{b.k.leased, b.k.dead},
		[]any{l.member, nowMs(), reason})
	return err
}

// DeadJob is a job in the dead-letter hash.
type DeadJob struct {
	Job        backend.Job
	Reason     string
	Deliveries int
	Time       time.Time
	// Body is the job as stored, for a job that could not be decoded (Job is zero).
	Body []byte
}

// DeadLetters returns the jobs in the dead-letter hash, oldest first. Delete the hash
// (or fields of it: they are the jobs' sequence numbers) to clear them.
func (b *Backend) DeadLetters(ctx context.Context) ([]DeadJob, error) {
	m, err := b.rdb.HGetAll(ctx, b.k.dead).Result()
	if err != nil {
		return nil, fmt.Errorf("redis: read dead letters: %w", err)
	}
	out := make([]DeadJob, 0, len(m))
	for seq, v := range m {
		info, body, _ := bytes.Cut([]byte(v), []byte{'\n'})
		var meta struct {
			T int64  `json:"t"`
			N int    `json:"n"`
			R string `json:"r"`
		}
		if err := json.Unmarshal(info, &meta); err != nil {
			return nil, fmt.Errorf("redis: dead letter %s: %w", seq, err)
		}
		dj := DeadJob{Reason: meta.R, Deliveries: meta.N, Time: time.UnixMilli(meta.T)}
		if dj.Job, err = decodeJob(body); err != nil {
			dj.Body = body
		}
		out = append(out, dj)
	}
	slices.SortStableFunc(out, func(a, b DeadJob) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// Pending returns how many jobs are ready, delayed or leased.
func (b *Backend) Pending(ctx context.Context) (int, error) {
	pl := b.rdb.Pipeline()
	r := pl.ZCard(ctx, b.k.ready)
	d := pl.ZCard(ctx, b.k.delayed)
	l := pl.ZCard(ctx, b.k.leased)
	if _, err := pl.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redis: count jobs: %w", err)
	}
	return int(r.Val() + d.Val() + l.Val()), nil
}

// toInt reads an integer reply, or a number sent as a string.
func toInt(v any) int64 {
	switch v := v.(type) {
	case int64:
		return v
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(v, 64)
			if ferr != nil {
				return -1
			}
			return int64(f)
		}
		return n
	case float64:
		return int64(v)
	}
	return -1
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
