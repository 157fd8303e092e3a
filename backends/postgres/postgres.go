// Package postgres is the PostgreSQL backend, registered as "postgres://" and
// "postgresql://": the queue is a table leased with FOR UPDATE SKIP LOCKED, run state is
// two tables changed in transactions that lock the run's row, and LISTEN/NOTIFY wakes
// waiting workers and clients. It needs PostgreSQL 13 or later.
//
// # URL
//
//	postgres://user:pass@host:5432/db?sslmode=disable&schema=flowgen&poll=1s&worker_id=w1
//
// Everything pgx understands is accepted (sslmode, application_name, connect_timeout,
// pool_max_conns, …). flowgen's own options, which New's Options override:
//
//	schema=NAME      schema of the tables, created when missing (default flowgen)
//	poll=DURATION    how often waiting Dequeue/WaitRun calls look without a notification (default 1s)
//	worker_id=ID     recorded on the jobs this backend leases (default host-pid)
//	notify=false     no LISTEN/NOTIFY, waiters only poll (for poolers in transaction mode)
//	migrate=false    do not migrate; fail unless the schema is at this binary's version
//
// The pool holds up to max(8, 4×GOMAXPROCS) connections unless pool_max_conns is set;
// one more connection LISTENs once something waits.
//
// # Tables
//
// Numbered migrations are embedded (migrations/*.sql) and applied by New under an
// advisory lock, so processes starting together migrate once; the schema_version table
// records them, and New refuses a schema newer than the binary (ErrSchemaTooNew).
//
//   - runs: one row per run (backend.Run; metadata as jsonb), indexed by (status,
//     updated) for the reconciler and by creation time for listing.
//   - run_kv: (run, key) → value, the run's completion records, arrivals and claims.
//   - jobs: the queue (see below). Dead-lettered jobs stay in it, marked dead with their
//     reason; DeadLetters lists them.
//
// # Queue
//
// Dequeue leases the deliverable jobs, higher priority first and first in, first out
// among equals, with one UPDATE over a SELECT … FOR UPDATE SKIP LOCKED, so concurrent
// workers never take the same job and never wait for each other. A job is deliverable
// when visible_at has passed: enqueueing sets it to the job's NotBefore, and leasing
// moves it to the end of the lease, so visible_at is also the stale-lease threshold. A
// lease that expires makes the job deliverable again and counts as one more delivery,
// which the runtime counts as an attempt: a node that kills its worker cannot loop
// forever. The runtime's WithLease sets the lease; its heartbeat extends it. Each lease
// carries a random token, kept in the Delivery's handle: Ack, Requeue, Extend and
// DeadLetter match it, so a holder whose lease expired and went to another worker
// changes nothing.
//
// A waiting Dequeue sleeps until a notification (every transaction that enqueues calls
// pg_notify, delivered when it commits), the time the next delayed job or lease falls
// due, or the poll interval; it never spins. Acks are batched: Ack returns at once, and
// the acknowledgements go out ahead of the next Dequeue's statement in the same round
// trip, or on their own within milliseconds, or on Close.
//
// # Transitions
//
// Update takes two round trips: one begins the transaction, locks the run's row (SELECT
// … FOR UPDATE) and loads its key-value rows; the transition runs on a
// backend.Snapshot; the second writes the changed keys, the jobs, the run row and the
// notifications in one statement and commits. Transitions of one run take turns within
// the process first, holding no connection while they wait, and the process caches the
// state it wrote with the run's revision, a random number every transition changes: a
// transition that finds its run at the cached revision loads no rows. CreateRun is a
// single statement. Deadlocks and serialization failures are retried. WaitRun is woken
// by the notification of the transaction that finished the run.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	goruntime "runtime"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flowgen/flowgen/runtime/backend"
)

func init() {
	open := func(ctx context.Context, u *url.URL) (backend.Backend, error) { return New(ctx, u.String()) }
	backend.Register("postgres", open)
	backend.Register("postgresql", open)
}

// Backend is the PostgreSQL backend. It is safe for concurrent use by many goroutines and
// many processes on one database and schema.
type Backend struct {
	pool      *pgxpool.Pool
	opts      options
	channel   string          // notification channel of the schema
	listenCfg *pgx.ConnConfig // the LISTEN connection's config

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	closeOnce sync.Once
	bgMu      sync.Mutex     // guards listening and bg.Add against Close
	listening bool           // the LISTEN loop was started
	bg        sync.WaitGroup // background goroutines

	jobs  *signal    // wakes Dequeue
	runs  runWaiters // wakes WaitRun
	acks  acker      // acknowledgements not written yet
	cache stateCache // the state of runs this process changed last
	locks runLocks   // transitions of a run take turns in this process
	meter meter      // calls to the server, for Counters
}

var _ backend.Backend = (*Backend)(nil)
var _ backend.Waiter = (*Backend)(nil)

// New connects to the database named by connString (a postgres:// or postgresql:// URL,
// see the package documentation for its options), migrates its schema and returns the
// backend. opts override the URL's options.
func New(ctx context.Context, connString string, opts ...Option) (*Backend, error) {
	o := defaultOptions()
	rest, maxConnsSet, err := parseURL(connString, &o)
	if err != nil {
		return nil, err
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if !maxConnsSet {
		cfg.MaxConns = int32(max(8, 4*goruntime.GOMAXPROCS(0)))
	}
	params := cfg.ConnConfig.RuntimeParams
	params["search_path"] = pgx.Identifier{o.schema}.Sanitize()
	if params["application_name"] == "" {
		params["application_name"] = "flowgen"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := migrate(ctx, pool, o.schema, o.migrate); err != nil {
		pool.Close()
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.Background())
	b := &Backend{
		pool:      pool,
		opts:      o,
		channel:   channelName(o.schema),
		listenCfg: cfg.ConnConfig.Copy(),
		ctx:       bctx,
		cancel:    cancel,
		jobs:      newSignal(),
		runs:      runWaiters{m: map[string]*runWait{}},
		cache:     stateCache{m: map[string]*cachedState{}},
		locks:     runLocks{m: map[string]*runLock{}},
	}
	return b, nil
}

// Pool returns the backend's connection pool, for inspection and tests.
func (b *Backend) Pool() *pgxpool.Pool { return b.pool }

// Schema returns the schema that holds the backend's tables.
func (b *Backend) Schema() string { return b.opts.schema }

// WorkerID returns the id recorded on the jobs this backend leases.
func (b *Backend) WorkerID() string { return b.opts.workerID }

// Close stops the backend: waiting Dequeue and WaitRun calls return ErrClosed, later
// calls fail with it, and the connections are closed once the calls in flight return.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.bgMu.Lock()
		b.cancel() // no background goroutine starts after this
		b.bgMu.Unlock()
		b.jobs.stop()
		b.bg.Wait()
		b.acks.mu.Lock()
		b.acks.closed = true
		b.acks.mu.Unlock()
		b.acks.flushes.Wait()
		b.flushAcks()
		b.pool.Close()
	})
	return nil
}

// check returns backend.ErrClosed after Close.
func (b *Backend) check() error {
	if b.ctx.Err() != nil {
		return backend.ErrClosed
	}
	return nil
}

// wrap names the operation in an error, and turns errors after Close into ErrClosed.
func (b *Backend) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if b.ctx.Err() != nil && !errors.Is(err, backend.ErrClosed) {
		return fmt.Errorf("postgres: %s: %w (%v)", op, backend.ErrClosed, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

var _ backend.Metered = (*Backend)(nil)

// meter counts the backend's calls to the server on the hot paths (queue and run
// state; not migrations, listing dead letters or Pending).
type meter struct {
	roundTrips atomic.Int64
	statements atomic.Int64
	kvRows     atomic.Int64
}

func (m *meter) calls(roundTrips, statements int64) {
	m.roundTrips.Add(roundTrips)
	m.statements.Add(statements)
}

// Counters reports the round trips to the server, the SQL statements they carried and
// the key-value rows transitions loaded, since the backend was opened: flowgen bench
// prints them per node execution.
func (b *Backend) Counters(context.Context) (map[string]float64, error) {
	return map[string]float64{
		"pg_round_trips": float64(b.meter.roundTrips.Load()),
		"pg_statements":  float64(b.meter.statements.Load()),
		"pg_kv_rows":     float64(b.meter.kvRows.Load()),
	}, nil
}
