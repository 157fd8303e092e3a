// Package sqlite is flowgen's embedded default backend, registered as "sqlite://": the
// queue, the runs and their state live in one SQLite file, in WAL mode, through
// modernc.org/sqlite (pure Go, no cgo). Any number of workers, in any number of
// processes on one machine, can share the file: every change is one short write
// transaction (BEGIN IMMEDIATE), writers of different processes wait for each other
// up to busy_timeout, and readers never wait.
//
// # URLs
//
//	sqlite://flow.db                    flow.db in the working directory
//	sqlite://path/to/flow.db            a path relative to the working directory
//	sqlite:///var/lib/flowgen/flow.db   an absolute path
//
// Query options, all optional:
//
//	busy_timeout=10s     how long a write waits for another process's transaction
//	                     (a Go duration, or milliseconds as a bare number; default 10s)
//	synchronous=normal   SQLite's synchronous pragma: off, normal or full (default
//	                     normal: in WAL mode a crash of the process loses nothing; a
//	                     power loss may lose the last transactions, never the file)
//	max_conns=8          the connection pool's size (default 8, at least 2: one
//	                     connection is kept for writes, the others serve reads)
//	ttl=720h             delete in the background the runs that finished longer ago
//	                     than this, with their state, and the dead letters as old
//	                     (default: keep everything); see Backend.ExpireRuns
//
// New takes the same settings as Options: WithBusyTimeout, WithSynchronous,
// WithMaxConns and WithTTL.
//
// # Schema
//
// The schema is created and upgraded when the file is opened, by numbered migrations
// embedded in the binary (migrations/NNNN_name.sql) and recorded in the schema_version
// table, all in one transaction. A file whose schema version is newer than this
// binary's is refused with ErrSchemaTooNew.
//
//   - jobs is the queue. seq orders jobs first in, first out; a job is visible when it
//     is not dead and its visible_at has passed. Dequeue leases in one
//     UPDATE … RETURNING that sets a fresh random lease_token, counts the delivery and
//     moves visible_at to the lease's end, so that an expired lease makes the job
//     visible again. A Delivery's handle is (seq, token): Ack, Requeue, Extend and
//     DeadLetter match both, so a holder whose lease expired and whose job was
//     delivered again changes nothing. Dead letters stay in the table (dead = 1) with
//     their reason; see Backend.DeadLetters.
//   - runs holds the run records, indexed by status and last update (the reconciler's
//     query) and by creation (ListRuns, newest first).
//   - run_kv holds each run's key-value state, clustered by run.
//
// # Transitions
//
// Update runs the transition inside one write transaction: the run's row and the keys
// the transition reads are read from the file (and cached), its writes and enqueues are
// buffered, and the changed keys, the run's record and the new jobs are written
// together at the end, so all of it takes effect or none. Writes of one process go
// through one connection; those that arrive while a transaction runs are committed
// together in the next one (group commit), so that under load one commit serves many
// transitions.
//
// # Waiting
//
// Dequeue waits for jobs without spinning: it wakes at once when this process enqueues,
// sleeps until the next delayed job or lease falls due, and otherwise polls the file
// for other processes' jobs, every 2 ms at first and backing off to every 50 ms.
// WaitRun (backend.Waiter) wakes at once when this process finishes the run, and polls
// every awaited run in one query every 10 ms for runs that other processes finish.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/flowgen/flowgen/runtime/backend"
)

func init() {
	backend.Register("sqlite", Open)
}

// Option configures New.
type Option func(*options)

type options struct {
	busyTimeout time.Duration
	synchronous string
	maxConns    int
	ttl         time.Duration
}

func defaultOptions() options {
	return options{busyTimeout: 10 * time.Second, synchronous: "NORMAL", maxConns: 8}
}

// WithBusyTimeout sets how long a write waits for another process's transaction before
// it fails (default 10s).
func WithBusyTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.busyTimeout = d
		}
	}
}

// WithSynchronous sets SQLite's synchronous pragma: "off", "normal" or "full" (default
// "normal", which in WAL mode loses nothing when the process crashes).
func WithSynchronous(mode string) Option {
	return func(o *options) { o.synchronous = strings.ToUpper(mode) }
}

// WithMaxConns sets the size of the connection pool (default 8, at least 2): one
// connection is kept for writes, the others serve reads.
func WithMaxConns(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxConns = max(n, 2)
		}
	}
}

// WithTTL makes the backend delete, in the background, runs that finished longer ago
// than ttl (with their state, and child runs only once their parent finished too) and
// dead-lettered jobs as old. Zero, the default, keeps everything.
func WithTTL(ttl time.Duration) Option {
	return func(o *options) {
		if ttl > 0 {
			o.ttl = ttl
		}
	}
}

// Backend is the SQLite backend. It is safe for concurrent use by many goroutines, and
// any number of Backends, in this process or others, may share one file.
type Backend struct {
	db   *sql.DB
	path string
	opts options

	// writeSem is held by the caller running this process's queued writes (see
	// write.go), so that they queue in Go rather than in SQLite's busy handler, which
	// sleeps; other processes are waited for by busy_timeout. Its holder uses wconn,
	// the connection kept for writes, whose page cache stays valid from one write to
	// the next.
	writeSem chan struct{}
	wconn    *sql.Conn
	qmu      sync.Mutex
	queue    []*writeOp

	stmts statements

	closed  atomic.Bool
	done    chan struct{}  // closed by Close
	bg      sync.WaitGroup // background goroutines: the run poller, the checkpointer, the cleanup
	commits atomic.Uint64  // write transactions committed, for checkpointLoop

	pollMin, pollMax time.Duration // Dequeue's polling bounds: minPoll, maxPoll
	closeErr         error
	once             sync.Once

	mu      sync.Mutex
	wake    chan struct{}          // closed and replaced when jobs are enqueued here
	waiters map[string]*runWaiters // WaitRun callers by run id
	kick    chan struct{}          // wakes pollRuns when the first waiter comes
}

// runWaiters is the channel closed when a run is seen final (or gone), by a transition
// of this Backend or by pollRuns, and how many WaitRun calls hold it.
type runWaiters struct {
	ch chan struct{}
	n  int
}

// ErrSchemaTooNew is returned by New when the database file was written by a newer
// flowgen with a schema version this binary does not know.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary supports")

// Open opens the backend a sqlite:// URL names; backend.Open calls it for the "sqlite"
// scheme. See the package documentation for the URL's forms and options.
func Open(ctx context.Context, u *url.URL) (backend.Backend, error) {
	path, opts, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, path, opts...)
}

// parseURL returns the file path and options of a sqlite:// URL.
func parseURL(u *url.URL) (string, []Option, error) {
	redacted := u.Redacted()
	path := u.Opaque // sqlite:flow.db
	if path == "" {
		path = u.Host + u.Path // sqlite://dir/flow.db, sqlite:///abs/flow.db
	}
	if path == "" {
		return "", nil, fmt.Errorf("sqlite: URL %q names no file (write sqlite://flow.db or sqlite:///abs/path/flow.db)", redacted)
	}
	var opts []Option
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "busy_timeout":
			d, err := parseDuration(v)
			if err != nil || d <= 0 {
				return "", nil, fmt.Errorf("sqlite: URL %q: busy_timeout=%q is not a positive duration (e.g. 10s, or 10000 for milliseconds)", redacted, v)
			}
			opts = append(opts, WithBusyTimeout(d))
		case "synchronous":
			switch strings.ToUpper(v) {
			case "OFF", "NORMAL", "FULL":
			default:
				return "", nil, fmt.Errorf("sqlite: URL %q: synchronous=%q must be off, normal or full", redacted, v)
			}
			opts = append(opts, WithSynchronous(v))
		case "max_conns":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return "", nil, fmt.Errorf("sqlite: URL %q: max_conns=%q is not a positive number", redacted, v)
			}
			opts = append(opts, WithMaxConns(n))
		case "ttl":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return "", nil, fmt.Errorf("sqlite: URL %q: ttl=%q is not a duration (e.g. 720h)", redacted, v)
			}
			opts = append(opts, WithTTL(d))
		default:
			return "", nil, fmt.Errorf("sqlite: URL %q: unknown option %q (known: busy_timeout, synchronous, max_conns, ttl)", redacted, k)
		}
	}
	return path, opts, nil
}

// parseDuration accepts a Go duration or a number of milliseconds, as SQLite's
// busy_timeout pragma does.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Millisecond, nil
	}
	return time.ParseDuration(s)
}

// New opens (creating it if needed) the SQLite database at path and brings its schema
// up to date. The path is a file name, relative to the working directory or absolute.
func New(ctx context.Context, path string, opts ...Option) (*Backend, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	switch o.synchronous {
	case "OFF", "NORMAL", "FULL":
	default:
		return nil, fmt.Errorf("sqlite: %s: synchronous mode %q must be off, normal or full", path, o.synchronous)
	}
	if path == "" {
		return nil, errors.New("sqlite: no database file given")
	}
	if strings.ContainsRune(path, '?') || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("sqlite: %q: a database file path may not contain '?' nor be a file: URI or :memory: (use mem:// for an in-memory backend)", path)
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", o.busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous("+o.synchronous+")")
	q.Add("_pragma", "journal_size_limit(67108864)") // truncate a write-ahead log grown past 64 MiB
	q.Add("_pragma", "wal_autocheckpoint(0)")        // checkpoints run in the background: checkpointLoop
	q.Add("_txlock", "immediate")                    // write transactions take the write lock at BEGIN
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(o.maxConns)
	db.SetMaxIdleConns(o.maxConns) // keep connections, and their prepared statements
	db.SetConnMaxIdleTime(5 * time.Minute)
	b := &Backend{
		db: db, path: path, opts: o,
		writeSem: make(chan struct{}, 1),
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		wake:     make(chan struct{}),
		waiters:  map[string]*runWaiters{},
		pollMin:  minPoll,
		pollMax:  maxPoll,
	}
	if b.wconn, err = db.Conn(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := b.migrate(ctx); err != nil {
		b.wconn.Close()
		db.Close()
		return nil, err
	}
	if err := b.stmts.prepare(ctx, db); err != nil {
		b.wconn.Close()
		db.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	b.bg.Add(2)
	go b.pollRuns()
	go b.checkpointLoop()
	if o.ttl > 0 {
		b.bg.Add(1)
		go b.cleanupLoop()
	}
	return b, nil
}

// Path returns the database file's path.
func (b *Backend) Path() string { return b.path }

// DB returns the backend's database handle, for inspection and tests. Changing rows
// behind the backend's back voids its guarantees.
func (b *Backend) DB() *sql.DB { return b.db }

// Close stops the backend: blocked Dequeue and WaitRun calls return, and the database
// is closed (checkpointing its write-ahead log when it is the file's last user).
func (b *Backend) Close() error {
	b.once.Do(func() {
		b.closed.Store(true)
		close(b.done)
		b.bg.Wait()
		b.mu.Lock()
		close(b.wake)
		b.mu.Unlock()
		// Wait for a write in flight to finish before closing the pool under it.
		b.writeSem <- struct{}{}
		b.stmts.close()
		b.wconn.Close()
		b.closeErr = b.db.Close()
	})
	return b.closeErr
}

// notify wakes this process's Dequeue calls waiting for jobs.
func (b *Backend) notify() {
	b.mu.Lock()
	if !b.closed.Load() {
		close(b.wake)
		b.wake = make(chan struct{})
	}
	b.mu.Unlock()
}

// wakeChan returns the channel the next notify closes.
func (b *Backend) wakeChan() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.wake
}

// isBusy reports whether err is SQLite's "database is busy" or "locked".
func isBusy(err error) bool {
	var se *sqlite3.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3lib.SQLITE_BUSY, sqlite3lib.SQLITE_LOCKED:
		return true
	}
	return false
}

// checkOpen returns ErrClosed after Close.
func (b *Backend) checkOpen() error {
	if b.closed.Load() {
		return backend.ErrClosed
	}
	return nil
}

// nanos converts t to Unix nanoseconds, 0 for the zero time.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromNanos converts Unix nanoseconds to a time, the zero time for 0.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Waiter  = (*Backend)(nil)
	_ backend.Expirer = (*Backend)(nil)
)
