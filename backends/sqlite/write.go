package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Writes go through one connection, the write connection, one transaction at a time,
// as SQLite allows one writer per file anyway. Writes that arrive while a transaction
// runs are committed together in the next one (group commit): the first waiting
// caller to get the connection runs every queued write, each in turn, inside one
// BEGIN IMMEDIATE … COMMIT, so that under load the cost of a commit (its locks and
// write-ahead log frames) is shared. Each write still takes effect entirely or not
// at all: a write that fails with errTxFunc has written nothing, and any other failure
// rolls the group back and runs each write again in a transaction of its own.

// maxGroup bounds how many writes share one transaction.
const maxGroup = 64

// txFunc is one write: it runs inside the transaction tx, using ctx for its statements.
// It may run more than once (after a failed group or a busy database), so it must
// reset any state it keeps. It returns errTxFunc only when it wrote nothing and no
// statement failed, so that the transaction can go on with the group's other writes.
type txFunc func(ctx context.Context, tx *sql.Tx) error

// writeOp is a write waiting for the write connection.
type writeOp struct {
	ctx  context.Context
	what string
	f    txFunc
	// alone asks for a transaction of its own.
	alone bool
	err   error
	// panicked is what f panicked with, if it did: submit panics with it again in
	// the caller's goroutine, whichever goroutine ran f.
	panicked any
	done     chan struct{} // closed when err is set
}

// errTxFunc wraps an error of a write's own logic (the run is missing, the caller's
// function failed): write returns it as it is, and never retries it (see txFunc).
type errTxFunc struct{ err error }

// Error returns the wrapped error's message.
func (e errTxFunc) Error() string { return e.err.Error() }

// write runs f as one atomic write, possibly in one transaction with other writes of
// this process, and returns its error: wrapped with what and the file, except errors
// of f wrapped in errTxFunc, which are returned as they are. It waits for the write
// connection until ctx is done; once f started, it waits for the outcome.
func (b *Backend) write(ctx context.Context, what string, f txFunc) error {
	return b.submit(&writeOp{ctx: ctx, what: what, f: f, done: make(chan struct{})})
}

// writeAlone is write in a transaction of its own, for writes that may fail after
// writing (schema migrations).
func (b *Backend) writeAlone(ctx context.Context, what string, f txFunc) error {
	return b.submit(&writeOp{ctx: ctx, what: what, f: f, alone: true, done: make(chan struct{})})
}

func (b *Backend) submit(op *writeOp) error {
	err := b.wait(op)
	if op.panicked != nil {
		panic(op.panicked)
	}
	return err
}

// wait queues op and waits for its outcome, running the queue when the write
// connection is free.
func (b *Backend) wait(op *writeOp) error {
	if b.closed.Load() {
		return backend.ErrClosed
	}
	if err := op.ctx.Err(); err != nil {
		return err
	}
	b.qmu.Lock()
	b.queue = append(b.queue, op)
	b.qmu.Unlock()
	select {
	case <-op.done:
		return op.err
	case b.writeSem <- struct{}{}:
		// This caller runs the queued writes until its own is done (unless an earlier
		// group did it already).
		defer func() { <-b.writeSem }()
		for !isDone(op) {
			b.runQueued()
		}
		return op.err
	case <-op.ctx.Done():
		if b.unqueue(op) {
			return op.ctx.Err()
		}
	case <-b.done:
		if b.unqueue(op) {
			return backend.ErrClosed
		}
	}
	<-op.done // another caller runs it already
	return op.err
}

// unqueue removes op from the queue; false when a group took it already.
func (b *Backend) unqueue(op *writeOp) bool {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	for i, o := range b.queue {
		if o == op {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			return true
		}
	}
	return false
}

// runQueued runs the writes queued so far; the caller holds writeSem.
func (b *Backend) runQueued() {
	b.qmu.Lock()
	n := min(len(b.queue), maxGroup)
	ops := make([]*writeOp, n)
	copy(ops, b.queue)
	b.queue = append(b.queue[:0], b.queue[n:]...)
	b.qmu.Unlock()

	var group []*writeOp
	for _, op := range ops {
		switch {
		case op.ctx.Err() != nil:
			b.finish(op, op.ctx.Err())
		case op.alone:
			b.runAlone(op)
		default:
			group = append(group, op)
		}
	}
	switch len(group) {
	case 0:
	case 1:
		b.runAlone(group[0])
	default:
		b.runGroup(group)
	}
}

func isDone(op *writeOp) bool {
	select {
	case <-op.done:
		return true
	default:
		return false
	}
}

func (b *Backend) finish(op *writeOp, err error) {
	op.err = err
	close(op.done)
}

// runGroup runs ops in one transaction; when that fails, it runs each again alone.
func (b *Backend) runGroup(ops []*writeOp) {
	tx, err := b.wconn.BeginTx(context.Background(), nil)
	if err != nil {
		b.recoverConn(err)
		for _, op := range ops {
			b.runAlone(op)
		}
		return
	}
	results := make([]error, len(ops))
	for i, op := range ops {
		err := call(op, context.WithoutCancel(op.ctx), tx)
		var fe errTxFunc
		if err != nil && !errors.As(err, &fe) {
			// It may have written part of its changes: undo the group, and run
			// every write that is not settled yet in its own transaction.
			tx.Rollback()
			b.recoverConn(err)
			for j, op := range ops {
				if j < i && results[j] != nil {
					b.finish(op, results[j])
				} else {
					b.runAlone(op)
				}
			}
			return
		}
		if err != nil {
			results[i] = fe.err
		}
	}
	if err := tx.Commit(); err != nil {
		b.recoverConn(err)
		for i, op := range ops {
			if results[i] != nil {
				b.finish(op, results[i])
			} else {
				b.runAlone(op)
			}
		}
		return
	}
	b.commits.Add(1)
	for i, op := range ops {
		b.finish(op, results[i])
	}
}

// runAlone runs op in a transaction of its own, retrying it a few times when SQLite
// reports the database busy beyond busy_timeout.
func (b *Backend) runAlone(op *writeOp) {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		err := b.writeOnce(op)
		if err == nil {
			b.finish(op, nil)
			return
		}
		var fe errTxFunc
		if errors.As(err, &fe) {
			b.finish(op, fe.err)
			return
		}
		if op.ctx.Err() != nil {
			b.finish(op, fmt.Errorf("sqlite: %s: %w", op.what, op.ctx.Err()))
			return
		}
		retry := b.recoverConn(err) || isBusy(err)
		if !retry || attempt == attempts {
			b.finish(op, fmt.Errorf("sqlite: %s in %s: %w", op.what, b.path, err))
			return
		}
	}
}

func (b *Backend) writeOnce(op *writeOp) error {
	tx, err := b.wconn.BeginTx(op.ctx, nil)
	if err != nil {
		return err
	}
	if err := call(op, op.ctx, tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	b.commits.Add(1)
	return nil
}

// Checkpoints copy the write-ahead log back into the database file, which takes two
// fsyncs. SQLite runs them in the commit that makes the log long enough; this backend
// turns that off and runs them in checkpointLoop instead, so that no write waits for
// them. Other processes on the file do the same for their own writes.
const (
	checkpointCommits = 256                    // commits of this process that call for a checkpoint
	checkpointIdle    = time.Second            // after which fewer commits do too
	checkpointTick    = 100 * time.Millisecond // how often checkpointLoop looks
)

// checkpointLoop checkpoints the write-ahead log (PASSIVE: it waits for no one) after
// every checkpointCommits commits of this process, or checkpointIdle after the last
// checkpoint when there were fewer, until Close.
func (b *Backend) checkpointLoop() {
	defer b.bg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.done
		cancel()
	}()
	t := time.NewTicker(checkpointTick)
	defer t.Stop()
	var last uint64
	lastAt := time.Now()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		n := b.commits.Load()
		if n == last || (n-last < checkpointCommits && time.Since(lastAt) < checkpointIdle) {
			continue
		}
		// A failure (another process checkpointing) leaves the log to the next one.
		_, _ = b.db.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
		last, lastAt = n, time.Now()
	}
}

// errPanicked stands for the panic of a write's function until it is panicked again.
var errPanicked = errors.New("the write's function panicked")

// call runs op's function, turning a panic into errPanicked (which rolls back its
// transaction and, in a group, runs the others alone) and keeping the panic value.
func call(op *writeOp, ctx context.Context, tx *sql.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			op.panicked, err = p, errPanicked
		}
	}()
	op.panicked = nil
	return op.f(ctx, tx)
}

// recoverConn replaces the write connection when err says it is unusable, and reports
// whether it did.
func (b *Backend) recoverConn(err error) bool {
	if !errors.Is(err, driver.ErrBadConn) && !errors.Is(err, sql.ErrConnDone) {
		return false
	}
	c, cerr := b.db.Conn(context.Background())
	if cerr != nil {
		return false
	}
	b.wconn.Close()
	b.wconn = c
	return true
}
