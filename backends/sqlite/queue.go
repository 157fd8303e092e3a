package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"sort"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Polling bounds of a Dequeue that waits: it looks for jobs other processes enqueued
// after minPoll, then after twice as long each time, up to every maxPoll.
const (
	minPoll = 2 * time.Millisecond
	maxPoll = 50 * time.Millisecond
)

// leaseHandle is a Delivery's handle: the job's row and the token of this lease. Once
// the job is delivered again its token changes, and the stale handle matches nothing.
type leaseHandle struct {
	seq   int64
	token string
}

// DeadJob is a job moved aside by DeadLetter.
type DeadJob struct {
	Job    backend.Job
	Reason string
	// Deliveries is how often the job had been delivered.
	Deliveries int
	// At is when it was moved aside.
	At time.Time
}

// Enqueue adds jobs; each becomes visible at its NotBefore (immediately when zero).
func (b *Backend) Enqueue(ctx context.Context, jobs ...backend.Job) error {
	if len(jobs) == 0 {
		return b.checkOpen()
	}
	err := b.write(ctx, "enqueue", func(ctx context.Context, tx *sql.Tx) error {
		return b.insertJobs(ctx, tx, jobs)
	})
	if err != nil {
		return err
	}
	b.notify()
	return nil
}

// insertJobs inserts jobs in the transaction tx.
func (b *Backend) insertJobs(ctx context.Context, tx *sql.Tx, jobs []backend.Job) error {
	rows := make([][]any, len(jobs))
	for i := range jobs {
		j := &jobs[i]
		nb := nanos(j.NotBefore)
		rows[i] = []any{j.ID, j.Run, j.Workflow, j.Version, int64(j.Kind), j.Node, j.From, j.Attempt, j.Priority, nb, j.Err, nb}
	}
	if err := b.stmts.writeRows(ctx, b.db, tx, sqlInsertJobs, rows); err != nil {
		return fmt.Errorf("insert jobs of run %s: %w", jobs[0].Run, err)
	}
	return nil
}

// Dequeue leases up to max visible jobs, highest priority first and FIFO among equals,
// waiting up to wait for the first one. It returns no jobs and no error on timeout.
//
// While it waits, it sleeps until the next job falls due (a delayed job, an expired
// lease), wakes at once when this process enqueues, and polls the file for jobs other
// processes enqueue, every 2 ms at first and backing off to every 50 ms; polls only
// read, they do not take the write lock.
func (b *Backend) Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*backend.Delivery, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	deadline := time.Now().Add(wait)
	pause := b.pollMin
	try := true // whether to try leasing before looking at the queue
	for {
		// Take the wake channel first, so that an enqueue from here on is not missed.
		wake := b.wakeChan()
		if try {
			ds, err := b.lease(ctx, max, lease)
			if err != nil || len(ds) > 0 {
				return ds, err
			}
		}
		next, err := b.nextDue(ctx)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		if !now.Before(deadline) {
			return nil, nil
		}
		if !try && !next.IsZero() && !next.After(now) {
			try = true // due now
			continue
		}
		sleep, due := min(pause, deadline.Sub(now)), false
		if next.After(now) && next.Sub(now) <= sleep {
			sleep, due = next.Sub(now), true
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-b.done:
			t.Stop()
			return nil, backend.ErrClosed
		case <-wake:
			try = true
		case <-t.C:
			try = due
			if !due {
				pause = min(2*pause, b.pollMax)
			}
		}
		t.Stop()
	}
}

// nextDue returns when the earliest live job is or was visible; zero for none.
func (b *Backend) nextDue(ctx context.Context) (time.Time, error) {
	var next sql.NullInt64
	if err := b.stmts.nextDue.QueryRowContext(ctx).Scan(&next); err != nil {
		return time.Time{}, b.readErr(ctx, "poll queue", err)
	}
	if !next.Valid {
		return time.Time{}, nil
	}
	return time.Unix(0, next.Int64), nil
}

// lease leases up to max visible jobs in one statement.
func (b *Backend) lease(ctx context.Context, max int, lease time.Duration) ([]*backend.Delivery, error) {
	token := rand.Text()
	var out []*backend.Delivery
	err := b.write(ctx, "dequeue", func(ctx context.Context, tx *sql.Tx) error {
		out = out[:0]
		now := time.Now()
		rows, err := tx.StmtContext(ctx, b.stmts.lease).QueryContext(ctx, token, now.Add(lease).UnixNano(), now.UnixNano(), max)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var h leaseHandle
			var kind, notBefore int64
			d := &backend.Delivery{}
			j := &d.Job
			if err := rows.Scan(&h.seq, &d.Deliveries, &j.ID, &j.Run, &j.Workflow, &j.Version, &kind, &j.Node, &j.From,
				&j.Attempt, &j.Priority, &notBefore, &j.Err); err != nil {
				return err
			}
			j.Kind, j.NotBefore = backend.JobKind(kind), fromNanos(notBefore)
			h.token = token
			d.Handle = h
			out = append(out, d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	// RETURNING yields the rows in no particular order.
	sort.Slice(out, func(i, j int) bool {
		a, c := out[i], out[j]
		if a.Job.Priority != c.Job.Priority {
			return a.Job.Priority > c.Job.Priority
		}
		return a.Handle.(leaseHandle).seq < c.Handle.(leaseHandle).seq
	})
	return out, nil
}

// handle returns d's lease handle; false for a delivery of another backend.
func handle(d *backend.Delivery) (leaseHandle, bool) {
	if d == nil {
		return leaseHandle{}, false
	}
	h, ok := d.Handle.(leaseHandle)
	return h, ok
}

// Ack removes delivered jobs for good. Deliveries whose lease was lost to another
// delivery are left alone.
func (b *Backend) Ack(ctx context.Context, ds ...*backend.Delivery) error {
	hs := make([]leaseHandle, 0, len(ds))
	for _, d := range ds {
		if h, ok := handle(d); ok {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return b.checkOpen()
	}
	return b.write(ctx, "ack", func(ctx context.Context, tx *sql.Tx) error {
		st := tx.StmtContext(ctx, b.stmts.ack)
		for _, h := range hs {
			if _, err := st.ExecContext(ctx, h.seq, h.token); err != nil {
				return err
			}
		}
		return nil
	})
}

// Requeue atomically replaces a delivered job with next (a retry or a postponed job).
// It does nothing when the delivery's lease was lost to another delivery.
func (b *Backend) Requeue(ctx context.Context, d *backend.Delivery, next backend.Job) error {
	h, ok := handle(d)
	if !ok {
		return b.checkOpen()
	}
	replaced := false
	err := b.write(ctx, "requeue", func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.StmtContext(ctx, b.stmts.ack).ExecContext(ctx, h.seq, h.token)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			replaced = false
			return err
		}
		replaced = true
		return b.insertJobs(ctx, tx, []backend.Job{next})
	})
	if err == nil && replaced {
		b.notify()
	}
	return err
}

// Extend renews the leases of jobs still being worked on, from now. Deliveries whose
// lease was lost are left alone.
func (b *Backend) Extend(ctx context.Context, lease time.Duration, ds ...*backend.Delivery) error {
	hs := make([]leaseHandle, 0, len(ds))
	for _, d := range ds {
		if h, ok := handle(d); ok {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return b.checkOpen()
	}
	return b.write(ctx, "extend leases", func(ctx context.Context, tx *sql.Tx) error {
		until := time.Now().Add(lease).UnixNano()
		st := tx.StmtContext(ctx, b.stmts.extend)
		for _, h := range hs {
			if _, err := st.ExecContext(ctx, until, h.seq, h.token); err != nil {
				return err
			}
		}
		return nil
	})
}

// DeadLetter moves a delivered job aside with the reason, so it is never delivered
// again (see DeadLetters). It does nothing when the delivery's lease was lost.
func (b *Backend) DeadLetter(ctx context.Context, d *backend.Delivery, reason string) error {
	h, ok := handle(d)
	if !ok {
		return b.checkOpen()
	}
	return b.write(ctx, "dead-letter", func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, b.stmts.deadLetter).ExecContext(ctx, time.Now().UnixNano(), reason, h.seq, h.token)
		return err
	})
}

// DeadLetters returns the jobs moved aside by DeadLetter, oldest first.
func (b *Backend) DeadLetters(ctx context.Context) ([]DeadJob, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := b.db.QueryContext(ctx, `SELECT `+jobColumns+`, deliveries, reason, dead_at FROM jobs WHERE dead = 1 ORDER BY dead_at, seq`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list dead letters in %s: %w", b.path, err)
	}
	defer rows.Close()
	var out []DeadJob
	for rows.Next() {
		var dj DeadJob
		var kind, notBefore, at int64
		j := &dj.Job
		if err := rows.Scan(&j.ID, &j.Run, &j.Workflow, &j.Version, &kind, &j.Node, &j.From, &j.Attempt, &j.Priority,
			&notBefore, &j.Err, &dj.Deliveries, &dj.Reason, &at); err != nil {
			return nil, fmt.Errorf("sqlite: list dead letters in %s: %w", b.path, err)
		}
		j.Kind, j.NotBefore, dj.At = backend.JobKind(kind), fromNanos(notBefore), fromNanos(at)
		out = append(out, dj)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list dead letters in %s: %w", b.path, err)
	}
	return out, nil
}

// Pending returns how many jobs are queued, delayed or leased (dead letters excluded).
func (b *Backend) Pending(ctx context.Context) (int, error) {
	if err := b.checkOpen(); err != nil {
		return 0, err
	}
	var n int
	if err := b.db.QueryRowContext(ctx, `SELECT count(*) FROM jobs WHERE dead = 0`).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: count jobs in %s: %w", b.path, err)
	}
	return n, nil
}
