package postgres

import (
	"context"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/flowgen/flowgen/runtime/backend"
)

// lease is a Delivery's handle: the job's row and the token of this delivery's lease.
// Dequeue sets a new token each time it leases the row, so the handle of a delivery
// whose lease expired and was taken again matches nothing.
type lease struct {
	seq   int64
	token int64
}

// jobRows holds jobs as column arrays for one multi-row INSERT … SELECT FROM unnest.
type jobRows struct {
	ids, runs, workflows, versions, nodes, froms, errs []string
	kinds                                              []int16
	attempts, priorities                               []int32
	notBefore                                          []pgtype.Timestamptz
	delays                                             []int64 // µs from now until the job is deliverable
}

func newJobRows(jobs []backend.Job) *jobRows {
	n := len(jobs)
	r := &jobRows{
		ids: make([]string, n), runs: make([]string, n), workflows: make([]string, n),
		versions: make([]string, n), nodes: make([]string, n), froms: make([]string, n),
		errs: make([]string, n), kinds: make([]int16, n), attempts: make([]int32, n),
		priorities: make([]int32, n), notBefore: make([]pgtype.Timestamptz, n), delays: make([]int64, n),
	}
	now := time.Now()
	for i, j := range jobs {
		r.ids[i], r.runs[i], r.workflows[i], r.versions[i] = j.ID, j.Run, j.Workflow, j.Version
		r.nodes[i], r.froms[i], r.errs[i] = j.Node, j.From, j.Err
		r.kinds[i], r.attempts[i], r.priorities[i] = int16(j.Kind), int32(j.Attempt), int32(j.Priority)
		if !j.NotBefore.IsZero() {
			r.notBefore[i] = pgtype.Timestamptz{Time: j.NotBefore, Valid: true}
			// Delays are sent relative to now, so the client's and server's clocks
			// need not agree.
			r.delays[i] = max(0, j.NotBefore.Sub(now).Microseconds())
		}
	}
	return r
}

// args are the arguments of insertJobsSQL, from $first on.
func (r *jobRows) args() []any {
	return []any{r.ids, r.runs, r.workflows, r.versions, r.kinds, r.nodes, r.froms, r.attempts, r.priorities, r.notBefore, r.errs, r.delays}
}

// insertJobsSQL inserts the jobs of jobRows.args given from $first on, as a SELECT a
// CTE or an INSERT can use; from adds a FROM item (the created run, in CreateRun).
func insertJobsSQL(first int, from string) string {
	p := func(i int) string { return "$" + strconv.Itoa(first+i) }
	return `INSERT INTO jobs (id, run, workflow, version, kind, node, from_node, attempt, priority, not_before, err, visible_at)
	SELECT t.id, t.run, t.workflow, t.version, t.kind, t.node, t.from_node, t.attempt, t.priority, t.not_before, t.err,
		clock_timestamp() + t.delay * interval '1 microsecond'
	FROM ` + from + `unnest(` + p(0) + `::text[], ` + p(1) + `::text[], ` + p(2) + `::text[], ` + p(3) + `::text[], ` +
		p(4) + `::smallint[], ` + p(5) + `::text[], ` + p(6) + `::text[], ` + p(7) + `::integer[], ` + p(8) + `::integer[], ` +
		p(9) + `::timestamptz[], ` + p(10) + `::text[], ` + p(11) + `::bigint[])
		AS t(id, run, workflow, version, kind, node, from_node, attempt, priority, not_before, err, delay)`
}

// enqueueSQL inserts jobs and sends the notifications $14 on channel $13.
var enqueueSQL = `WITH ins AS (` + insertJobsSQL(1, "") + ` RETURNING 1)
SELECT pg_notify($13, p) FROM unnest($14::text[]) AS p WHERE EXISTS (SELECT 1 FROM ins)`

// wakeLocal wakes this process's waiters for the jobs just committed, without waiting
// for the notification to come back.
func (b *Backend) wakeLocal(delays []int64) {
	for _, p := range jobPayloads(delays) {
		b.dispatch(p)
	}
}

// Enqueue adds jobs; each becomes deliverable at its NotBefore (at once when zero).
func (b *Backend) Enqueue(ctx context.Context, jobs ...backend.Job) error {
	if err := b.check(); err != nil {
		return err
	}
	if len(jobs) == 0 {
		return nil
	}
	rows := newJobRows(jobs)
	args := append(rows.args(), b.channel, jobPayloads(rows.delays))
	b.meter.calls(1, 1)
	if _, err := b.pool.Exec(ctx, enqueueSQL, args...); err != nil {
		return b.wrap("enqueue", err)
	}
	b.wakeLocal(rows.delays)
	return nil
}

// dequeueSQL leases up to $1 deliverable jobs for $2 µs with token $3 for worker $4. It
// returns each job's visible_at before the lease, for ordering.
const dequeueSQL = `WITH next AS (
	SELECT seq, visible_at FROM jobs
	WHERE NOT dead AND visible_at <= now()
	ORDER BY priority DESC, visible_at, seq
	LIMIT $1
	FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET
	visible_at = now() + $2::bigint * interval '1 microsecond',
	lease_token = $3, worker_id = $4, deliveries = j.deliveries + 1
FROM next WHERE j.seq = next.seq
RETURNING j.seq, next.visible_at, j.id, j.run, j.workflow, j.version, j.kind, j.node, j.from_node,
	j.attempt, j.priority, j.not_before, j.err, j.deliveries`

// Dequeue leases up to max deliverable jobs, highest priority first and FIFO among
// equals, waiting up to wait for the first. While it waits it sleeps until a
// notification, a delayed job's time or the poll interval, whichever comes first.
func (b *Backend) Dequeue(ctx context.Context, max int, leaseFor, wait time.Duration) ([]*backend.Delivery, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	deadline := time.Now().Add(wait)
	for {
		wake := b.jobs.C() // before the query, so a job committed after it wakes us
		ds, err := b.lease(ctx, max, leaseFor)
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		b.startListener()
		sleep := min(left, b.opts.poll)
		if due, ok, err := b.nextDue(ctx); err != nil {
			return nil, err
		} else if ok && due < sleep {
			sleep = due
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-b.ctx.Done():
			t.Stop()
			return nil, backend.ErrClosed
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// lease runs one dequeue statement.
func (b *Backend) lease(ctx context.Context, max int, leaseFor time.Duration) ([]*backend.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	token := rand.Int64()
	var rows pgx.Rows
	if seqs, tokens := b.acks.take(); len(seqs) > 0 {
		// The pending acknowledgements go first, in the same round trip. If they
		// cannot, they are put back for the timer or Close to write.
		conn, err := b.pool.Acquire(ctx)
		if err != nil {
			b.addAcks(seqs, tokens)
			return nil, b.wrap("dequeue", err)
		}
		defer conn.Release()
		batch := &pgx.Batch{}
		batch.Queue(ackSQL, seqs, tokens)
		batch.Queue(dequeueSQL, max, leaseFor.Microseconds(), token, b.opts.workerID)
		b.meter.calls(1, 2)
		br := conn.SendBatch(ctx, batch)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			b.addAcks(seqs, tokens)
			return nil, b.wrap("dequeue", err)
		}
		rows, err = br.Query()
		if err != nil {
			return nil, b.wrap("dequeue", err)
		}
	} else {
		var err error
		b.meter.calls(1, 1)
		rows, err = b.pool.Query(ctx, dequeueSQL, max, leaseFor.Microseconds(), token, b.opts.workerID)
		if err != nil {
			return nil, b.wrap("dequeue", err)
		}
	}
	type leased struct {
		d       *backend.Delivery
		visible time.Time
		seq     int64
	}
	var ls []leased
	for rows.Next() {
		var (
			l          leased
			j          backend.Job
			kind       int16
			notBefore  pgtype.Timestamptz
			deliveries int
		)
		if err := rows.Scan(&l.seq, &l.visible, &j.ID, &j.Run, &j.Workflow, &j.Version, &kind, &j.Node, &j.From,
			&j.Attempt, &j.Priority, &notBefore, &j.Err, &deliveries); err != nil {
			rows.Close()
			return nil, b.wrap("dequeue", err)
		}
		j.Kind = backend.JobKind(kind)
		if notBefore.Valid {
			j.NotBefore = notBefore.Time
		}
		l.d = &backend.Delivery{Job: j, Deliveries: deliveries, Handle: lease{seq: l.seq, token: token}}
		ls = append(ls, l)
	}
	if err := rows.Err(); err != nil {
		return nil, b.wrap("dequeue", err)
	}
	// RETURNING comes in no particular order.
	sort.Slice(ls, func(i, k int) bool {
		a, c := ls[i], ls[k]
		if a.d.Job.Priority != c.d.Job.Priority {
			return a.d.Job.Priority > c.d.Job.Priority
		}
		if !a.visible.Equal(c.visible) {
			return a.visible.Before(c.visible)
		}
		return a.seq < c.seq
	})
	ds := make([]*backend.Delivery, len(ls))
	for i, l := range ls {
		ds[i] = l.d
	}
	return ds, nil
}

// nextDueSQL is how long until the next job becomes deliverable (a delayed job, or
// an expiring lease), in microseconds; NULL when nothing is waiting.
const nextDueSQL = `SELECT (extract(epoch FROM min(visible_at) - clock_timestamp()) * 1e6)::bigint
FROM jobs WHERE NOT dead AND visible_at > now()`

// nextDue returns how long until the next job becomes deliverable, if one will.
func (b *Backend) nextDue(ctx context.Context) (time.Duration, bool, error) {
	var us *int64
	b.meter.calls(1, 1)
	if err := b.pool.QueryRow(ctx, nextDueSQL).Scan(&us); err != nil {
		return 0, false, b.wrap("dequeue", err)
	}
	if us == nil {
		return 0, false, nil
	}
	return time.Duration(max(*us, 0)) * time.Microsecond, true, nil
}

// handles returns the rows and tokens of ds, skipping deliveries of other backends.
func handles(ds []*backend.Delivery) (seqs, tokens []int64) {
	for _, d := range ds {
		if l, ok := d.Handle.(lease); ok {
			seqs = append(seqs, l.seq)
			tokens = append(tokens, l.token)
		}
	}
	return seqs, tokens
}

// ackSQL deletes the jobs of the (seq, lease token) pairs $1, $2 that still match.
const ackSQL = `DELETE FROM jobs j USING unnest($1::bigint[], $2::bigint[]) AS h(seq, token)
WHERE j.seq = h.seq AND j.lease_token = h.token AND NOT j.dead`

// ackDelay is how long an acknowledgement waits for a Dequeue to carry it before it is
// written on its own.
const ackDelay = 2 * time.Millisecond

// acker holds the acknowledgements not written yet. They are written in one statement,
// ahead of the next Dequeue's lease statement in the same round trip, or by a timer
// after ackDelay, or by Close.
type acker struct {
	mu      sync.Mutex
	seqs    []int64
	tokens  []int64
	armed   bool // a timer will flush
	closed  bool
	flushes sync.WaitGroup
}

// take removes and returns the pending acknowledgements.
func (a *acker) take() (seqs, tokens []int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seqs, tokens = a.seqs, a.tokens
	a.seqs, a.tokens = nil, nil
	return seqs, tokens
}

// Ack removes delivered jobs for good; deliveries whose lease was taken by another
// delivery are left alone. Acknowledgements are batched: Ack returns at once, and they
// are written within milliseconds, with the next Dequeue of this backend or on their
// own, and by Close. An acknowledgement lost in a crash only makes the job come back
// when its lease expires, as delivery is at least once; the runtime then finds the
// node complete and acks again.
func (b *Backend) Ack(_ context.Context, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	seqs, tokens := handles(ds)
	if len(seqs) == 0 {
		return nil
	}
	return b.addAcks(seqs, tokens)
}

// addAcks adds acknowledgements to write, and makes sure a timer will write them.
func (b *Backend) addAcks(seqs, tokens []int64) error {
	a := &b.acks
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return backend.ErrClosed
	}
	a.seqs = append(a.seqs, seqs...)
	a.tokens = append(a.tokens, tokens...)
	if !a.armed {
		a.armed = true
		a.flushes.Add(1)
		time.AfterFunc(ackDelay, func() {
			defer a.flushes.Done()
			a.mu.Lock()
			a.armed = false
			a.mu.Unlock()
			b.flushAcks()
		})
	}
	return nil
}

// flushAcks writes the pending acknowledgements.
func (b *Backend) flushAcks() {
	seqs, tokens := b.acks.take()
	if len(seqs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.meter.calls(1, 1)
	if _, err := b.pool.Exec(ctx, ackSQL, seqs, tokens); err != nil {
		b.opts.logger.Warn("flowgen postgres: writing acknowledgements failed; the jobs will be delivered again when their leases expire",
			"jobs", len(seqs), "err", err)
	}
}

// requeueSQL replaces the job leased as ($1, $2) with a new one, and notifies.
const requeueSQL = `WITH r AS (
	UPDATE jobs SET id = $3, run = $4, workflow = $5, version = $6, kind = $7, node = $8, from_node = $9,
		attempt = $10, priority = $11, not_before = $12, err = $13,
		visible_at = clock_timestamp() + $14::bigint * interval '1 microsecond',
		lease_token = NULL, worker_id = NULL, deliveries = 0
	WHERE seq = $1 AND lease_token = $2 AND NOT dead
	RETURNING 1)
SELECT pg_notify($15, p) FROM unnest($16::text[]) AS p WHERE EXISTS (SELECT 1 FROM r)`

// Requeue atomically replaces a delivered job with next, unless the delivery's lease was
// taken by another delivery.
func (b *Backend) Requeue(ctx context.Context, d *backend.Delivery, next backend.Job) error {
	if err := b.check(); err != nil {
		return err
	}
	l, ok := d.Handle.(lease)
	if !ok {
		return nil
	}
	r := newJobRows([]backend.Job{next})
	b.meter.calls(1, 1)
	rows, err := b.pool.Query(ctx, requeueSQL, l.seq, l.token, next.ID, next.Run, next.Workflow, next.Version,
		r.kinds[0], next.Node, next.From, r.attempts[0], r.priorities[0], r.notBefore[0], next.Err, r.delays[0],
		b.channel, jobPayloads(r.delays))
	if err != nil {
		return b.wrap("requeue", err)
	}
	requeued := false
	for rows.Next() {
		requeued = true
	}
	if err := rows.Err(); err != nil {
		return b.wrap("requeue", err)
	}
	if requeued {
		b.wakeLocal(r.delays)
	}
	return nil
}

// extendSQL renews the leases of the (seq, token) pairs $1, $2 to $3 µs from now.
const extendSQL = `UPDATE jobs j SET visible_at = now() + $3::bigint * interval '1 microsecond'
FROM unnest($1::bigint[], $2::bigint[]) AS h(seq, token)
WHERE j.seq = h.seq AND j.lease_token = h.token AND NOT j.dead`

// Extend renews the leases of jobs still being worked on, to leaseFor from now.
func (b *Backend) Extend(ctx context.Context, leaseFor time.Duration, ds ...*backend.Delivery) error {
	if err := b.check(); err != nil {
		return err
	}
	seqs, tokens := handles(ds)
	if len(seqs) == 0 {
		return nil
	}
	b.meter.calls(1, 1)
	_, err := b.pool.Exec(ctx, extendSQL, seqs, tokens, leaseFor.Microseconds())
	return b.wrap("extend", err)
}

// deadLetterSQL marks the job leased as ($1, $2) dead, with reason $3.
const deadLetterSQL = `UPDATE jobs SET dead = true, dead_reason = $3, dead_at = now()
WHERE seq = $1 AND lease_token = $2 AND NOT dead`

// DeadLetter moves a delivered job aside with the reason, so it is never delivered
// again; DeadLetters lists such jobs.
func (b *Backend) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	if err := b.check(); err != nil {
		return err
	}
	l, ok := d.Handle.(lease)
	if !ok {
		return nil
	}
	b.meter.calls(1, 1)
	_, err := b.pool.Exec(ctx, deadLetterSQL, l.seq, l.token, reason)
	return b.wrap("dead-letter", err)
}

// DeadJob is a job moved aside by DeadLetter.
type DeadJob struct {
	Job        backend.Job
	Reason     string
	Deliveries int
	WorkerID   string
	At         time.Time
}

// DeadLetters returns the dead-lettered jobs, oldest first, at most limit (0: all).
func (b *Backend) DeadLetters(ctx context.Context, limit int) ([]DeadJob, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	q := `SELECT id, run, workflow, version, kind, node, from_node, attempt, priority, not_before, err,
		dead_reason, deliveries, coalesce(worker_id, ''), dead_at
	FROM jobs WHERE dead ORDER BY dead_at, seq`
	var args []any
	if limit > 0 {
		q += ` LIMIT $1`
		args = append(args, limit)
	}
	rows, err := b.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, b.wrap("dead letters", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeadJob, error) {
		var (
			dj        DeadJob
			kind      int16
			notBefore pgtype.Timestamptz
			reason    pgtype.Text
		)
		j := &dj.Job
		err := row.Scan(&j.ID, &j.Run, &j.Workflow, &j.Version, &kind, &j.Node, &j.From, &j.Attempt, &j.Priority,
			&notBefore, &j.Err, &reason, &dj.Deliveries, &dj.WorkerID, &dj.At)
		j.Kind = backend.JobKind(kind)
		if notBefore.Valid {
			j.NotBefore = notBefore.Time
		}
		dj.Reason = reason.String
		return dj, err
	})
	return out, b.wrap("dead letters", err)
}

// Pending returns how many jobs are queued, delayed or leased (dead-lettered ones
// aside), after writing the acknowledgements this backend holds.
func (b *Backend) Pending(ctx context.Context) (int, error) {
	if err := b.check(); err != nil {
		return 0, err
	}
	b.flushAcks()
	var n int
	err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE NOT dead`).Scan(&n)
	return n, b.wrap("pending", err)
}
