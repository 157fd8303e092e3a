package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Worker executes the nodes of registered workflows, taking jobs from the client's
// backend. Run any number of workers, in any number of processes, on one backend.
type Worker struct {
	c    *Client
	opts workerOptions
	log  *slog.Logger
	wfs  map[string]*Workflow

	mu       sync.Mutex
	inflight map[string]map[*flight]struct{} // by run id
}

// flight is one job being executed.
type flight struct {
	d      *backend.Delivery
	cancel context.CancelFunc
}

// NewWorker returns a worker on c's backend. Register workflows before calling Run.
func NewWorker(c *Client, opts ...WorkerOption) *Worker {
	o := defaultWorkerOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return &Worker{c: c, opts: o, log: o.logger, wfs: map[string]*Workflow{}, inflight: map[string]map[*flight]struct{}{}}
}

// Register makes the worker execute wfs. Generated packages offer Register(w), which
// registers every workflow of the package.
func (w *Worker) Register(wfs ...*Workflow) {
	for _, wf := range wfs {
		w.wfs[wf.ID] = wf
	}
}

// Run takes and executes jobs until ctx is done, then waits for the nodes in flight to
// finish and returns nil. It returns an error only when the backend fails for good.
func (w *Worker) Run(ctx context.Context) error {
	w.c.mu.Lock()
	w.c.workers[w] = struct{}{}
	w.c.mu.Unlock()
	defer func() {
		w.c.mu.Lock()
		delete(w.c.workers, w)
		w.c.mu.Unlock()
	}()

	// Nodes in flight finish after ctx is done; only a run's cancellation stops them.
	execCtx := context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	hbDone := make(chan struct{})
	go w.heartbeat(ctx, hbDone)
	defer func() { <-hbDone }()
	defer wg.Wait()

	// A fixed pool of executors, so goroutine stacks grow once, not once per job. The
	// fetcher holds one token per idle executor and dequeues as many jobs as it holds.
	n := w.opts.concurrency
	jobs := make(chan *backend.Delivery)
	idle := make(chan struct{}, n)
	for range n {
		idle <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				w.handle(execCtx, d)
				idle <- struct{}{}
			}
		}()
	}
	defer close(jobs)
	for {
		select {
		case <-idle:
		case <-ctx.Done():
			return nil
		}
		free := 1
	more:
		for free < n {
			select {
			case <-idle:
				free++
			default:
				break more
			}
		}
		ds, err := w.c.b.Dequeue(ctx, free, w.opts.lease, w.opts.poll)
		for range free - len(ds) {
			idle <- struct{}{}
		}
		for _, d := range ds {
			jobs <- d
		}
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, backend.ErrClosed) {
				return nil
			}
			w.log.Error("flowgen: dequeue failed", "err", err)
			select {
			case <-time.After(w.opts.poll):
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// heartbeat renews the leases of jobs in flight and cancels the nodes of runs that were
// cancelled or ended elsewhere.
func (w *Worker) heartbeat(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(w.opts.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		var ds []*backend.Delivery
		runs := make([]string, 0, len(w.inflight))
		for run, fs := range w.inflight {
			runs = append(runs, run)
			for f := range fs {
				if f.d.Handle != nil { // a trigger's message: its visibility is the trigger's
					ds = append(ds, f.d)
				}
			}
		}
		w.mu.Unlock()
		if len(ds) == 0 {
			continue
		}
		if err := w.c.b.Extend(ctx, w.opts.lease, ds...); err != nil {
			w.log.Warn("flowgen: lease renewal failed", "err", err)
		}
		for _, run := range runs {
			if r, _, err := w.c.b.Read(ctx, run); err == nil && r.Status.Final() {
				w.cancelRun(run)
			}
		}
	}
}

// cancelRun cancels the nodes in flight of run.
func (w *Worker) cancelRun(run string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for f := range w.inflight[run] {
		f.cancel()
	}
}

func (w *Worker) track(ctx context.Context, d *backend.Delivery) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	f := &flight{d: d, cancel: cancel}
	w.mu.Lock()
	fs := w.inflight[d.Job.Run]
	if fs == nil {
		fs = map[*flight]struct{}{}
		w.inflight[d.Job.Run] = fs
	}
	fs[f] = struct{}{}
	w.mu.Unlock()
	return ctx, func() {
		cancel()
		w.mu.Lock()
		delete(fs, f)
		if len(fs) == 0 {
			delete(w.inflight, d.Job.Run)
		}
		w.mu.Unlock()
	}
}

// job is one delivery being handled, with what it needs.
type job struct {
	w    *Worker
	d    *backend.Delivery
	wf   *Workflow
	node *Node
	in   instance
	log  jobLogger
}

// handle executes one delivery. It returns the error that leaves the job for another
// delivery (nil when the job was acked, requeued or dead-lettered); only HandleMessage
// uses it, since the queue redelivers a job whose lease expires.
func (w *Worker) handle(ctx context.Context, d *backend.Delivery) (failed error) {
	ctx, done := w.track(ctx, d)
	defer done()
	j := d.Job
	log := jobLogger{l: w.log, job: &d.Job}
	defer func() {
		// A bug must not take the worker down: the job is delivered again, and
		// dead-lettered after too many deliveries.
		if p := recover(); p != nil {
			failed = w.retryLater(ctx, d, log, fmt.Errorf("panic: %v", p))
		}
	}()
	if j.Workflow == "" { // jobs addressed to a run by another run (ChildDone) name no workflow
		r, _, err := w.c.b.Read(ctx, j.Run)
		if err != nil {
			return w.retryLater(ctx, d, log, err)
		}
		d.Job.Workflow, d.Job.Version = r.Workflow, r.Version
		j = d.Job
	}
	wf := w.wfs[j.Workflow]
	if wf == nil || wf.Version != j.Version {
		// Another worker may have this workflow or version: return the job, never drop it.
		log.Warn("flowgen: job for a workflow version this worker does not have; returned to the queue",
			"workflow", j.Workflow, "version", j.Version)
		next := j
		next.NotBefore = time.Now().Add(w.opts.requeueDelay)
		w.requeue(ctx, d, next, log)
		return nil
	}
	if j.Kind == backend.Rerun { // names a node given by the user: checked by rerun
		h := &job{w: w, d: d, wf: wf, log: log}
		if err := h.rerun(ctx); err != nil {
			return w.retryLater(ctx, d, log, err)
		}
		return nil
	}
	in, err := parseInstance(j.Node)
	var node *Node
	if err == nil {
		if node = wf.Nodes[in.node]; node == nil {
			err = fmt.Errorf("workflow %s has no node %q", wf.ID, in.node)
		}
	}
	if err != nil {
		w.deadLetter(ctx, d, log, err.Error())
		return nil
	}
	h := &job{w: w, d: d, wf: wf, node: node, in: in, log: log}
	switch j.Kind {
	case backend.Exec, backend.Fallback:
		err = h.exec(ctx)
	case backend.Resume:
		err = h.resume(ctx)
	case backend.ChildDone:
		err = h.childDone(ctx)
	default:
		w.deadLetter(ctx, d, log, fmt.Sprintf("unknown job kind %d", j.Kind))
		return nil
	}
	if err != nil {
		return w.retryLater(ctx, d, log, err)
	}
	return nil
}

// retryLater leaves a job whose handling failed for another delivery, dead-lettering it
// after too many. It returns err when the job is left for another delivery.
func (w *Worker) retryLater(ctx context.Context, d *backend.Delivery, log jobLogger, err error) error {
	if errors.Is(err, backend.ErrNotFound) {
		log.Warn("flowgen: job for a run that does not exist; dropped")
		w.ack(ctx, d, log)
		return nil
	}
	if d.Deliveries >= w.opts.maxDeliveries {
		w.deadLetter(ctx, d, log, err.Error())
		return nil
	}
	log.Error("flowgen: job failed; it will be delivered again when its lease expires", "err", err, "deliveries", d.Deliveries)
	return err
}

// ack, requeue and deadLetter settle a delivery. A delivery without a Handle came from
// a serverless trigger, which deletes the message when HandleMessage returns nil: there
// is nothing to ack, and a requeue is a new message.
func (w *Worker) ack(ctx context.Context, d *backend.Delivery, log jobLogger) {
	if d.Handle == nil {
		return
	}
	if err := w.c.b.Ack(ctx, d); err != nil {
		log.Warn("flowgen: ack failed; the job will be delivered again", "err", err)
	}
}

func (w *Worker) requeue(ctx context.Context, d *backend.Delivery, next backend.Job, log jobLogger) {
	if d.Handle == nil {
		if err := w.c.b.Enqueue(ctx, next); err != nil {
			log.Warn("flowgen: requeue failed; the job is lost until the reconciler finds its run", "err", err)
		}
		return
	}
	if err := w.c.b.Requeue(ctx, d, next); err != nil {
		log.Warn("flowgen: requeue failed; the job will be delivered again when its lease expires", "err", err)
	}
}

func (w *Worker) deadLetter(ctx context.Context, d *backend.Delivery, log jobLogger, reason string) {
	log.Error("flowgen: job moved to the dead-letter queue", "reason", reason, "deliveries", d.Deliveries)
	if err := w.c.b.DeadLetter(ctx, d, reason); err != nil {
		log.Warn("flowgen: dead-lettering failed", "err", err)
	}
}

// backoff is the delay before attempt+1: base·2^(attempt-1), ±20% jitter.
func backoff(base time.Duration, attempt int) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base << min(attempt-1, 20)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// call runs f with the node's timeout, turning a panic into an error.
func call(ctx context.Context, f ExecFunc, t *Task, timeout time.Duration) (out Output, err error) {
	ctx = context.WithValue(ctx, taskKey{}, t)
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("timed out after %s", timeout))
		defer cancel()
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	out, err = f(ctx, t)
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
	}
	return out, err
}

// route returns the indexes of the edges node takes for out: the edges whose action is
// out's action, or when none has it the edges without an action; in both cases only
// those whose condition holds.
func route(t *Task, node *Node, out Output) ([]int, error) {
	match := false
	if out.Action != "" {
		for _, e := range node.Edges {
			if e.Action == out.Action {
				match = true
				break
			}
		}
	}
	var taken []int
	for i, e := range node.Edges {
		if (match && e.Action != out.Action) || (!match && e.Action != "") {
			continue
		}
		if e.Cond != nil {
			ok, err := protect(func() (bool, error) { return e.Cond(t, out.Data) })
			if err != nil {
				return nil, fmt.Errorf("condition of edge %s -> %s: %w", node.ID, e.Target, err)
			}
			if !ok {
				continue
			}
		}
		taken = append(taken, i)
	}
	return taken, nil
}

// protect runs generated code other than a node function (a condition, an input
// builder), turning a panic into an error.
func protect[T any](f func() (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}

// encodeJSONArray joins JSON values into an array.
func encodeJSONArray(items [][]byte) []byte {
	n := 2
	for _, it := range items {
		n += len(it) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, it...)
	}
	return append(b, ']')
}

// splitJSONArray splits a JSON array into its elements.
func splitJSONArray(data []byte) ([][]byte, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("batch input is not a JSON array: %w", err)
	}
	items := make([][]byte, len(raw))
	for i, r := range raw {
		items[i] = r
	}
	return items, nil
}

// jobLogger logs lines about one job: the run, node and job id are added when a line
// is written, so handling a job costs nothing for logging until something is logged.
type jobLogger struct {
	l   *slog.Logger
	job *backend.Job
}

func (jl jobLogger) attrs(args []any) []any {
	return append([]any{"run", jl.job.Run, "node", jl.job.Node, "job", jl.job.ID}, args...)
}

func (jl jobLogger) Info(msg string, args ...any)  { jl.l.Info(msg, jl.attrs(args)...) }
func (jl jobLogger) Warn(msg string, args ...any)  { jl.l.Warn(msg, jl.attrs(args)...) }
func (jl jobLogger) Error(msg string, args ...any) { jl.l.Error(msg, jl.attrs(args)...) }
