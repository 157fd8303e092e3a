package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// DefaultBackend is the backend URL Open uses for "": the embedded SQLite backend, on
// flowgen.db in the working directory, so that runs need no server.
const DefaultBackend = "sqlite://flowgen.db"

// Client starts and observes runs on a backend. It is safe for concurrent use; share one
// per process.
type Client struct {
	b backend.Backend

	mu      sync.Mutex
	workers map[*Worker]struct{} // local workers, told at once about cancellations
}

// Open connects to the backend named by url ("" for DefaultBackend).
func Open(ctx context.Context, url string) (*Client, error) {
	if url == "" {
		url = DefaultBackend
	}
	b, err := backend.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	return New(b), nil
}

// New returns a client on an already opened backend.
func New(b backend.Backend) *Client {
	return &Client{b: b, workers: map[*Worker]struct{}{}}
}

// Backend returns the client's backend.
func (c *Client) Backend() backend.Backend { return c.b }

// Close closes the backend.
func (c *Client) Close() error { return c.b.Close() }

// StartOption configures Start.
type StartOption func(*startOptions)

type startOptions struct {
	id       string
	priority int
	metadata map[string]string
	delay    time.Duration
}

// WithRunID sets the run's id. Starting the same id twice starts one run; the second
// Start returns the id and no error.
func WithRunID(id RunID) StartOption { return func(o *startOptions) { o.id = string(id) } }

// WithPriority sets the priority of the run's jobs: higher runs first (default 0).
func WithPriority(p int) StartOption { return func(o *startOptions) { o.priority = p } }

// WithMetadata attaches string metadata to the run.
func WithMetadata(m map[string]string) StartOption {
	return func(o *startOptions) { o.metadata = m }
}

// WithDelay postpones the run's start nodes.
func WithDelay(d time.Duration) StartOption { return func(o *startOptions) { o.delay = d } }

// Start starts a run of wf with the given input (nil for workflows without input).
// Generated StartXxxRun functions call it with their typed input.
func Start(ctx context.Context, c *Client, wf *Workflow, input any, opts ...StartOption) (RunID, error) {
	var data []byte
	if input != nil {
		var err error
		if data, err = json.Marshal(input); err != nil {
			return "", fmt.Errorf("start %s: encode input: %w", wf.ID, err)
		}
	}
	id, _, err := c.start(ctx, wf, data, "", "", opts...)
	return id, err
}

// start creates a run; created is false when a run with the id existed.
func (c *Client) start(ctx context.Context, wf *Workflow, input []byte, parent, parentNode string, opts ...StartOption) (id RunID, created bool, err error) {
	var o startOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.id == "" {
		o.id = newID()
	}
	now := time.Now()
	r := &backend.Run{
		ID: o.id, Workflow: wf.ID, Version: wf.Version, Status: backend.Running,
		Priority: o.priority, Input: input, Metadata: o.metadata,
		Parent: parent, ParentNode: parentNode, Created: now, Updated: now,
	}
	created, err = c.b.CreateRun(ctx, r, func(tx backend.Tx) error {
		x := newTransition(tx, wf)
		for _, s := range wf.Start {
			if err := x.claim(nodeInstance(s), "", o.delay); err != nil {
				return err
			}
		}
		return x.finishIfIdle()
	})
	if err != nil {
		return "", false, fmt.Errorf("start %s: %w", wf.ID, err)
	}
	return RunID(o.id), created, nil
}

// RunInfo describes a run.
type RunInfo struct {
	ID       RunID
	Workflow string
	Version  string
	Status   backend.Status
	// FailedNode and Reason explain a failed or cancelled run.
	FailedNode string
	Reason     string
	Metadata   map[string]string
	Created    time.Time
	Updated    time.Time
	// Result is the JSON result of a completed run.
	Result json.RawMessage
}

func runInfo(r *backend.Run) *RunInfo {
	return &RunInfo{
		ID: RunID(r.ID), Workflow: r.Workflow, Version: r.Version, Status: r.Status,
		FailedNode: r.FailedNode, Reason: r.Reason, Metadata: r.Metadata,
		Created: r.Created, Updated: r.Updated, Result: r.Result,
	}
}

// Err is nil for a completed or running run, and a *RunError otherwise.
func (r *RunInfo) Err() error {
	switch r.Status {
	case backend.Failed:
		return &RunError{Run: r.ID, Node: r.FailedNode, Reason: r.Reason}
	case backend.Cancelled:
		return &RunError{Run: r.ID, Cancelled: true, Reason: r.Reason}
	}
	return nil
}

// Status returns a run's current state.
func (c *Client) Status(ctx context.Context, id RunID) (*RunInfo, error) {
	r, _, err := c.b.Read(ctx, string(id))
	if err != nil {
		return nil, wrapNotFound(id, err)
	}
	return runInfo(r), nil
}

func wrapNotFound(id RunID, err error) error {
	if errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("run %s: %w", id, ErrNotFound)
	}
	return err
}

// ListRuns lists runs with the given status ("" for all), newest first, at most limit
// (0 for 100).
func (c *Client) ListRuns(ctx context.Context, status backend.Status, limit int) ([]*RunInfo, error) {
	rs, err := c.b.ListRuns(ctx, backend.RunFilter{Status: status, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]*RunInfo, len(rs))
	for i, r := range rs {
		out[i] = runInfo(r)
	}
	return out, nil
}

// Await waits until the run is final and returns its JSON result, or a *RunError when
// it failed or was cancelled. Generated AwaitXxxRun functions decode the result.
func Await(ctx context.Context, c *Client, id RunID) (json.RawMessage, error) {
	info, err := c.wait(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := info.Err(); err != nil {
		return nil, err
	}
	return info.Result, nil
}

func (c *Client) wait(ctx context.Context, id RunID) (*RunInfo, error) {
	if w, ok := c.b.(backend.Waiter); ok {
		r, err := w.WaitRun(ctx, string(id))
		if err != nil {
			return nil, wrapNotFound(id, err)
		}
		return runInfo(r), nil
	}
	pause := time.Millisecond
	for {
		info, err := c.Status(ctx, id)
		if err != nil {
			return nil, err
		}
		if info.Status.Final() {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 250*time.Millisecond)
	}
}

// CancelRun cancels a running run and the child runs of its subflows: nodes in flight
// see their ctx cancelled and nothing new starts. Cancelling a final run changes nothing
// and returns no error.
func (c *Client) CancelRun(ctx context.Context, id RunID, reason string) error {
	var children []byte
	err := c.b.Update(ctx, string(id), func(tx backend.Tx) error {
		r := tx.Run()
		if r.Status != backend.Running {
			children = nil
			return nil
		}
		r.Status = backend.Cancelled
		r.Reason = reason
		v, err := tx.Get(childrenKey)
		children = v[0]
		return err
	})
	if err != nil {
		return wrapNotFound(id, err)
	}
	c.mu.Lock()
	for w := range c.workers {
		w.cancelRun(string(id))
	}
	c.mu.Unlock()
	for _, child := range strings.Fields(string(children)) {
		// A child that does not exist yet checks its parent once created (startChild).
		if err := c.CancelRun(ctx, RunID(child), reason); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("cancel %s: %w", id, err)
		}
	}
	return nil
}

// resumePayload is what ResumeRun stores for the wait node's Resume job.
type resumePayload struct {
	Action string          `json:"a,omitempty"`
	Output json.RawMessage `json:"o,omitempty"`
}

// ResumeRun continues a run paused at wait node `node`: the node completes with the
// given action and output (nil keeps the node's input as its output).
func (c *Client) ResumeRun(ctx context.Context, id RunID, node, action string, output any) error {
	var payload resumePayload
	payload.Action = action
	if output != nil {
		data, err := json.Marshal(output)
		if err != nil {
			return fmt.Errorf("resume %s at %q: encode output: %w", id, node, err)
		}
		payload.Output = data
	}
	data, _ := json.Marshal(payload)
	err := c.b.Update(ctx, string(id), func(tx backend.Tx) error {
		r := tx.Run()
		if r.Status != backend.Running {
			return fmt.Errorf("run is %s", r.Status)
		}
		v, err := tx.Get(waitingKey(node))
		if err != nil {
			return err
		}
		if v[0] == nil {
			return fmt.Errorf("node %q is not waiting", node)
		}
		inst := string(v[0])
		if err := tx.Delete(waitingKey(node)); err != nil {
			return err
		}
		if err := tx.Put(resumeKey(inst), data); err != nil {
			return err
		}
		tx.Enqueue(backend.Job{ID: newID(), Run: r.ID, Workflow: r.Workflow, Version: r.Version,
			Kind: backend.Resume, Node: inst, Attempt: 1, Priority: r.Priority})
		return nil
	})
	if err != nil {
		return fmt.Errorf("resume %s at %q: %w", id, node, wrapNotFound(id, err))
	}
	return nil
}

// RerunFrom runs node again, then its descendants, keeping the outputs of every other
// node. The run becomes running again. Nodes inside loops and batches cannot be rerun.
func (c *Client) RerunFrom(ctx context.Context, id RunID, node string) error {
	err := c.b.Update(ctx, string(id), func(tx backend.Tx) error {
		r := tx.Run()
		if r.Status == backend.Running {
			return errors.New("run is still running")
		}
		r.Status, r.Result, r.FailedNode, r.Reason = backend.Running, nil, "", ""
		if _, err := tx.Incr(openKey, 1); err != nil {
			return err
		}
		tx.Enqueue(backend.Job{ID: newID(), Run: r.ID, Workflow: r.Workflow, Version: r.Version,
			Kind: backend.Rerun, Node: node, Attempt: 1, Priority: r.Priority})
		return nil
	})
	if err != nil {
		return fmt.Errorf("rerun %s from %q: %w", id, node, wrapNotFound(id, err))
	}
	return nil
}

var idPrefix = func() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

var idSeq atomic.Uint64

// newID returns an id unique across processes: a random per-process prefix and a counter.
func newID() string {
	return idPrefix + strconv.FormatUint(idSeq.Add(1), 36)
}
