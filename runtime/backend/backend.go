// Package backend defines what a flowgen backend implements: a job queue with leases and
// a per-run key-value store with atomic transitions. The runtime's completion algorithm
// runs on these primitives; each backend maps them onto its strongest atomic tool (a
// mutex, a SQL transaction, a Lua script, conditional writes).
//
// Backends register a URL scheme with Register; runtime.Open finds them by URL.
package backend

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"time"
)

// Backend is a queue plus run state. All methods are safe for concurrent use by many
// goroutines and, for durable backends, many processes.
type Backend interface {
	Queue
	Store
	// Close releases the backend's connections.
	Close() error
}

// Queue holds jobs. Delivery is at least once: a job leased by Dequeue and not acked
// before its lease expires is delivered again.
type Queue interface {
	// Enqueue adds jobs; each becomes visible at its NotBefore (immediately when zero).
	Enqueue(ctx context.Context, jobs ...Job) error
	// Dequeue leases up to max visible jobs, highest priority first and FIFO among equals,
	// waiting up to wait for the first one. It returns no jobs and no error on timeout.
	Dequeue(ctx context.Context, max int, lease, wait time.Duration) ([]*Delivery, error)
	// Ack removes delivered jobs for good.
	Ack(ctx context.Context, ds ...*Delivery) error
	// Requeue atomically replaces a delivered job with next (a retry or a postponed job).
	Requeue(ctx context.Context, d *Delivery, next Job) error
	// Extend renews the leases of jobs still being worked on.
	Extend(ctx context.Context, lease time.Duration, ds ...*Delivery) error
	// DeadLetter moves a delivered job aside with the reason, so it is never delivered again.
	DeadLetter(ctx context.Context, d *Delivery, reason string) error
}

// Store holds runs: one record per run plus a small key-value map per run, changed
// only through atomic transitions.
type Store interface {
	// CreateRun creates r and runs init in the same transition. It reports created=false,
	// and changes nothing, when a run with r.ID already exists.
	CreateRun(ctx context.Context, r *Run, init func(Tx) error) (created bool, err error)
	// Update runs fn as one atomic transition of run id: either all of fn's writes and
	// enqueues take effect or none. fn may be called again if the backend retries an
	// optimistic transaction, so it must have no other side effects.
	Update(ctx context.Context, id string, fn func(Tx) error) error
	// Read returns the run and the values of the given keys (absent keys are left out).
	Read(ctx context.Context, id string, keys ...string) (*Run, map[string][]byte, error)
	// ListRuns lists runs matching f, newest first.
	ListRuns(ctx context.Context, f RunFilter) ([]*Run, error)
}

// Tx is one atomic transition of one run. Methods fail only when the backend does.
type Tx interface {
	// Run is the run's record; changes to it are saved with the transition.
	Run() *Run
	// Get returns the values of keys; absent keys are nil.
	Get(keys ...string) ([][]byte, error)
	// PutIfAbsent stores key=val unless key exists, and reports whether it stored.
	PutIfAbsent(key string, val []byte) (bool, error)
	// Put stores key=val.
	Put(key string, val []byte) error
	// Delete removes keys.
	Delete(keys ...string) error
	// Incr adds delta to the integer at key (absent is 0) and returns the new value.
	Incr(key string, delta int64) (int64, error)
	// Enqueue adds jobs when the transition commits.
	Enqueue(jobs ...Job)
}

// Waiter is implemented by backends that can tell when a run finishes without polling.
type Waiter interface {
	// WaitRun blocks until run id is no longer running or ctx is done.
	WaitRun(ctx context.Context, id string) (*Run, error)
}

// Expirer is implemented by backends that can delete finished runs, so that a
// long-lived backend does not grow without bound.
type Expirer interface {
	// ExpireRuns deletes every run in a final status that was last updated before
	// before, with all its state, and returns how many runs it deleted. It never deletes
	// a running run, nor the finished child run of a subflow whose parent still runs
	// (the parent reads the child's result when it is notified).
	ExpireRuns(ctx context.Context, before time.Time) (int, error)
}

// Status is a run's state.
type Status string

// Run statuses. Running is the only non-final one.
const (
	Running   Status = "running"
	Completed Status = "completed"
	Failed    Status = "failed"
	Cancelled Status = "cancelled"
)

// Final reports whether s is a final status.
func (s Status) Final() bool { return s != Running }

// Run is a run's record.
type Run struct {
	ID       string
	Workflow string
	Version  string
	Status   Status
	Priority int
	Input    []byte // JSON run input
	Result   []byte // JSON result, when completed
	// FailedNode and Reason explain a failed or cancelled run.
	FailedNode string
	Reason     string
	// Parent and ParentNode link a subflow's child run to the parent's node instance.
	Parent     string
	ParentNode string
	Metadata   map[string]string
	Created    time.Time
	Updated    time.Time
}

// RunFilter selects runs in ListRuns.
type RunFilter struct {
	Status        Status    // "" for any status
	Workflow      string    // "" for any workflow
	UpdatedBefore time.Time // zero for any time
	Limit         int       // 0 for the backend's default (100)
}

// JobKind says what a job asks a worker to do.
type JobKind uint8

// Job kinds.
const (
	// Exec runs a node instance.
	Exec JobKind = iota
	// Fallback runs a failed node's fallback in its place.
	Fallback
	// Resume completes a wait node with the stored resume payload.
	Resume
	// ChildDone completes a subflow node from its finished child run.
	ChildDone
	// Rerun resets a node and its descendants and runs the node again.
	Rerun
)

// Job names a unit of work by ids only; outputs never travel in jobs.
type Job struct {
	ID       string // unique; set by the runtime
	Run      string
	Workflow string
	Version  string
	Kind     JobKind
	Node     string // node instance key (node id, loop scope, batch item)
	From     string // instance key of the predecessor whose arrival made the node ready ("" for all-joins)
	Attempt  int    // 1-based attempt number
	Priority int
	// NotBefore delays the job; zero means now.
	NotBefore time.Time
	// Err carries the failure a Fallback job stands in for.
	Err string
}

// Delivery is a leased job.
type Delivery struct {
	Job Job
	// Deliveries counts how often this job was leased, this time included.
	Deliveries int
	// Handle is the backend's receipt for Ack, Requeue, Extend and DeadLetter.
	Handle any
}

// ErrClosed is returned by a backend used after Close.
var ErrClosed = errors.New("backend closed")

// ErrNotFound is returned for a run that does not exist.
var ErrNotFound = errors.New("run not found")

// ErrTooLarge is wrapped by the error of a transition (or CreateRun) that stores a value,
// run input or result larger than the backend can hold. Backends that store large values
// by reference never return it. The runtime fails the node that produced the value,
// naming it, instead of retrying a write that cannot succeed.
var ErrTooLarge = errors.New("value too large for the backend")

// Opener opens a backend from its URL.
type Opener func(ctx context.Context, u *url.URL) (Backend, error)

var registry = struct {
	sync.RWMutex
	m map[string]Opener
}{m: map[string]Opener{}}

// Register makes a backend available under a URL scheme. Backends call it from init, as
// database/sql drivers do; registering a scheme twice panics.
func Register(scheme string, open Opener) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[scheme]; dup {
		panic("backend: Register called twice for scheme " + scheme)
	}
	registry.m[scheme] = open
}

// Open opens the backend named by rawURL's scheme.
func Open(ctx context.Context, rawURL string) (Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("backend URL %q: %w", rawURL, err)
	}
	registry.RLock()
	open, ok := registry.m[u.Scheme]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("backend URL %q: unknown scheme %q (known: %v; import the backend's package to register it)", rawURL, u.Scheme, Schemes())
	}
	return open(ctx, u)
}

// Schemes lists the registered URL schemes, sorted.
func Schemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	s := make([]string, 0, len(registry.m))
	for k := range registry.m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Metered is implemented by backends that count the calls they make to their servers,
// so that `flowgen bench` can report calls per node execution (what sets a user's bill
// and latency). Counters only grow; names are snake_case, e.g. "redis_cmds".
type Metered interface {
	Counters(ctx context.Context) (map[string]float64, error)
}

// MessageDecoder is implemented by backends whose queue messages a serverless trigger
// can hand to a worker (an AWS Lambda with an SQS event source, an Azure Functions queue
// trigger): the trigger receives the message and deletes it, so the worker needs only
// its body. See runtime.Worker.HandleMessage.
type MessageDecoder interface {
	// DecodeMessage decodes a message body written by this backend into a Delivery with
	// a nil Handle and Deliveries counted from what the body carries (at least 1).
	// DeadLetter accepts such a Delivery: it stores the job aside and deletes nothing.
	DecodeMessage(body []byte) (*Delivery, error)
}

// ScanNamer is implemented by backends whose reconciler scans something with a name of
// its own in the stats it reports, such as "scannedKeys" (Redis) or "scannedItems"
// (DynamoDB); the default name is "scanned".
type ScanNamer interface {
	ScannedName() string
}
