package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// load reads the run and what the job's task needs: the instance's own completion
// record (a duplicate delivery finds it), its sources' outputs, the arriving
// predecessor's output and any extra keys.
func (h *job) load(ctx context.Context, extra ...string) (*backend.Run, *Task, map[string][]byte, error) {
	own := completionKey(h.in.key())
	keys := append(make([]string, 0, 2+len(h.node.Sources)+len(extra)), own)
	srcKeys := make([]string, len(h.node.Sources))
	for i, s := range h.node.Sources {
		srcKeys[i] = completionKey(h.in.at(h.wf.Nodes[s]).key())
	}
	keys = append(keys, srcKeys...)
	from := h.d.Job.From
	if from != "" {
		keys = append(keys, completionKey(from))
	}
	keys = append(keys, extra...)
	run, vals, err := h.w.c.b.Read(ctx, h.d.Job.Run, keys...)
	if err != nil {
		return nil, nil, nil, err
	}
	t := &Task{
		Run: RunID(run.ID), Node: h.node.ID, Attempt: h.attempt(),
		Iteration: h.in.iteration(), Item: h.in.item, input: run.Input,
		outputs: make(map[string][]byte, len(srcKeys)),
	}
	for i, s := range h.node.Sources {
		if out, ok, err := outputOf(vals[srcKeys[i]]); err != nil {
			return nil, nil, nil, err
		} else if ok {
			t.outputs[s] = out
		}
	}
	if from != "" {
		if t.arrived, _, err = outputOf(vals[completionKey(from)]); err != nil {
			return nil, nil, nil, err
		}
	}
	return run, t, vals, nil
}

// outputOf extracts the output of a completion record; false when absent or skipped.
func outputOf(data []byte) ([]byte, bool, error) {
	if data == nil {
		return nil, false, nil
	}
	rec, err := decodeRecord(data)
	if err != nil || rec.Skipped {
		return nil, false, err
	}
	return rec.Output, true, nil
}

// input is a built-in node's input: built by generated code, or passed through.
func (h *job) input(t *Task) ([]byte, error) {
	switch {
	case h.node.Input != nil:
		return protect(func() ([]byte, error) { return h.node.Input(t) })
	case t.arrived != nil:
		return t.arrived, nil
	case len(h.node.Sources) == 1:
		return t.outputs[h.node.Sources[0]], nil
	default:
		return t.input, nil
	}
}

// attempt is the job's attempt number; a delivery whose lease expired counts as one.
func (h *job) attempt() int { return h.d.Job.Attempt + h.d.Deliveries - 1 }

// settled reports whether the job has nothing left to do: its run ended or its
// instance is complete (a duplicate delivery). It acks such jobs.
func (h *job) settled(ctx context.Context, run *backend.Run, vals map[string][]byte) bool {
	if run.Status == backend.Running && vals[completionKey(h.in.key())] == nil {
		return false
	}
	h.w.ack(ctx, h.d, h.log)
	return true
}

// exec runs an Exec or Fallback job.
func (h *job) exec(ctx context.Context) error {
	var extra string
	switch {
	case h.in.item >= 0:
		extra = completionKey(instance{node: h.in.node, scope: h.in.scope, item: -1}.key())
	case h.node.Kind == KindBatchGather:
		extra = completionKey(h.in.at(h.wf.Nodes[h.node.Scatter]).key())
	case h.node.Kind == KindSleep:
		extra = wakeKey(h.in.key())
	case h.node.Kind == KindSubflow:
		extra = childGenKey(h.in.key())
	case h.node.Kind == KindWait:
		extra = resumeKey(h.in.key())
	}
	var extras []string
	if extra != "" {
		extras = []string{extra}
	}
	run, t, vals, err := h.load(ctx, extras...)
	if err != nil {
		return err
	}
	if h.settled(ctx, run, vals) {
		return nil
	}
	if h.d.Job.Kind == backend.Fallback {
		return h.fallback(ctx, t)
	}
	node := h.node
	if (node.Kind == KindFunc || h.in.item >= 0) && h.attempt() > max(node.MaxAttempts, 1) {
		// The leases of earlier deliveries expired: their workers stopped or lost them.
		// Each counts as an attempt, so a node that kills its worker cannot loop forever.
		return h.failed(ctx, Permanent(fmt.Errorf("lease expired on %d earlier delivery(ies): the worker running the node stopped or lost it", h.d.Deliveries-1)))
	}
	switch {
	case h.in.item >= 0:
		return h.execItem(ctx, t, vals[extra])
	case node.Kind == KindFunc:
		out, err := call(ctx, node.Exec, t, node.Timeout)
		if err != nil {
			return h.failed(ctx, err)
		}
		return h.complete(ctx, t, out)
	case node.Kind == KindLoop:
		cont, err := protect(func() (bool, error) { return node.LoopCond(t, t.arrived, h.in.iteration()) })
		if err != nil {
			return h.failed(ctx, Permanent(err))
		}
		action := ActionBreak
		if cont {
			action = ActionContinue
		}
		return h.complete(ctx, t, Output{Data: t.arrived, Action: action})
	case node.Kind == KindSleep:
		return h.sleep(ctx, t, vals[extra])
	case node.Kind == KindWait:
		if p := vals[extra]; p != nil { // resumed, and its Resume job lost
			return h.resumeWith(ctx, t, p)
		}
		return h.update(ctx, func(x *transition) error {
			return x.tx.Put(waitingKey(node.ID), []byte(h.in.key()))
		})
	case node.Kind == KindSubflow:
		return h.startChild(ctx, run, t, vals[extra])
	case node.Kind == KindBatchScatter:
		return h.scatter(ctx, t)
	case node.Kind == KindBatchGather:
		return h.gather(ctx, t, vals[extra])
	}
	return fmt.Errorf("node %q has unknown kind %d", node.ID, node.Kind)
}

// update applies fn to the run in one transition, unless the run ended, then acks.
func (h *job) update(ctx context.Context, fn func(x *transition) error) error {
	err := h.w.c.b.Update(ctx, h.d.Job.Run, func(tx backend.Tx) error {
		if tx.Run().Status != backend.Running {
			return nil
		}
		return fn(newTransition(tx, h.wf))
	})
	if err != nil {
		return err
	}
	h.w.ack(ctx, h.d, h.log)
	return nil
}

// complete routes out and records the instance's completion.
func (h *job) complete(ctx context.Context, t *Task, out Output) error {
	taken, err := route(t, h.node, out)
	if err != nil {
		return h.failed(ctx, Permanent(err))
	}
	rec := &record{Output: out.Data, Action: out.Action, Taken: taken}
	return h.updateOutput(ctx, len(out.Data), func(x *transition) error {
		_, err := x.complete(h.in, rec)
		return err
	})
}

// updateOutput is update for a transition that stores an output of size bytes. An
// output the backend cannot hold fails the node with an error saying so, instead of
// failing the job again at every delivery until it is dead-lettered.
func (h *job) updateOutput(ctx context.Context, size int, fn func(x *transition) error) error {
	err := h.update(ctx, fn)
	if errors.Is(err, backend.ErrTooLarge) {
		return h.failed(ctx, Permanent(fmt.Errorf("output of %d bytes cannot be stored: %w", size, err)))
	}
	return err
}

// jobFailure is what a Fallback job carries about the failure it stands in for.
type jobFailure struct {
	Attempts int    `json:"attempts"`
	Err      string `json:"err"`
}

// failed handles a failed attempt: retry with backoff, then the fallback, then fail
// the run naming the node.
func (h *job) failed(ctx context.Context, cause error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		// The run was cancelled (or ended) while the node ran.
		if run, _, err := h.w.c.b.Read(context.WithoutCancel(ctx), h.d.Job.Run); err == nil && run.Status.Final() {
			h.w.ack(ctx, h.d, h.log)
			return nil
		}
	}
	ctx = context.WithoutCancel(ctx)
	j := h.d.Job
	attempt := h.attempt()
	if j.Kind == backend.Fallback {
		// The fallback's own output could not be routed or stored: running it again
		// would fail the same way.
		reason := fmt.Sprintf("fallback %q: %v", h.node.Fallback, cause)
		h.log.Error("flowgen: fallback failed; failing the run", "err", cause)
		return h.update(ctx, func(x *transition) error {
			x.fail(h.node.ID, reason)
			return nil
		})
	}
	if !IsPermanent(cause) && attempt < h.node.MaxAttempts && j.Kind == backend.Exec {
		next := j
		next.ID, next.Attempt = newID(), attempt+1
		next.NotBefore = time.Now().Add(backoff(h.node.RetryDelay, attempt))
		h.log.Info("flowgen: node attempt failed; retrying", "attempt", attempt, "of", h.node.MaxAttempts, "err", cause)
		h.w.requeue(ctx, h.d, next, h.log)
		return nil
	}
	if h.node.Fallback != "" && h.in.item < 0 {
		f, _ := json.Marshal(jobFailure{Attempts: attempt, Err: cause.Error()})
		next := j
		next.ID, next.Kind, next.Attempt, next.Err, next.NotBefore = newID(), backend.Fallback, 1, string(f), time.Time{}
		h.log.Warn("flowgen: node failed; running its fallback", "fallback", h.node.Fallback, "err", cause)
		h.w.requeue(ctx, h.d, next, h.log)
		return nil
	}
	reason := fmt.Sprintf("after %d attempt(s): %v", attempt, cause)
	h.log.Error("flowgen: node failed; failing the run", "err", cause, "attempts", attempt)
	return h.update(ctx, func(x *transition) error {
		x.fail(h.node.ID, reason)
		return nil
	})
}

// fallback runs the fallback node's function in place of the failed node; its output
// continues along the failed node's edges.
func (h *job) fallback(ctx context.Context, t *Task) error {
	var f jobFailure
	_ = json.Unmarshal([]byte(h.d.Job.Err), &f)
	fb := h.wf.Nodes[h.node.Fallback]
	if fb == nil { // a spec without the fallback node: its default policy
		fb = &Node{ID: h.node.Fallback, MaxAttempts: 1}
	}
	failure := &Failure{Node: h.node.ID, Attempts: f.Attempts, Err: f.Err}
	out, err := call(withFailure(ctx, failure), h.node.FallbackExec, t, fb.Timeout)
	if err == nil {
		return h.complete(ctx, t, out)
	}
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		return h.failed(ctx, err) // acks when the run was cancelled
	}
	attempt := h.attempt()
	if !IsPermanent(err) && attempt < fb.MaxAttempts {
		next := h.d.Job
		next.ID, next.Attempt = newID(), attempt+1
		next.NotBefore = time.Now().Add(backoff(fb.RetryDelay, attempt))
		h.w.requeue(ctx, h.d, next, h.log)
		return nil
	}
	reason := fmt.Sprintf("after %d attempt(s): %s; fallback %q failed after %d attempt(s): %v",
		f.Attempts, f.Err, fb.ID, attempt, err)
	return h.update(context.WithoutCancel(ctx), func(x *transition) error {
		x.fail(h.node.ID, reason)
		return nil
	})
}

// sleep completes a sleep node once its duration has passed since it first ran. Until
// then its job goes back to the queue, due at the wake-up time, which is stored in the
// run's state so that redeliveries and restarts keep it.
func (h *job) sleep(ctx context.Context, t *Task, wake []byte) error {
	if wake == nil {
		proposed := []byte(time.Now().Add(h.node.Sleep).Format(time.RFC3339Nano))
		key := wakeKey(h.in.key())
		err := h.w.c.b.Update(ctx, h.d.Job.Run, func(tx backend.Tx) error {
			v, err := tx.Get(key)
			if err != nil {
				return err
			}
			if wake = v[0]; wake == nil {
				wake = proposed
				return tx.Put(key, wake)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	until, err := time.Parse(time.RFC3339Nano, string(wake))
	if err != nil {
		return fmt.Errorf("corrupt wake-up time %q: %w", wake, err)
	}
	if time.Now().Before(until) {
		next := h.d.Job
		next.ID, next.NotBefore = newID(), until
		h.w.requeue(ctx, h.d, next, h.log)
		return nil
	}
	data, err := h.input(t)
	if err != nil {
		return h.failed(ctx, Permanent(err))
	}
	return h.complete(ctx, t, Output{Data: data})
}

// childRunID is the id of the child run that subflow instance inst of run starts. A
// rerun of the instance bumps its generation gen, so that it starts a new child.
func childRunID(run, inst string, gen []byte) string {
	id := run + "/" + inst
	if len(gen) > 0 && string(gen) != "0" {
		id += "~" + string(gen)
	}
	return id
}

// startChild starts a subflow's child run; its end comes back as a ChildDone job.
func (h *job) startChild(ctx context.Context, run *backend.Run, t *Task, gen []byte) error {
	child := h.w.wfs[h.node.Subflow]
	if child == nil {
		return h.failed(ctx, Permanent(fmt.Errorf("this worker has no workflow %q for subflow %q", h.node.Subflow, h.node.ID)))
	}
	data, err := h.input(t)
	if err != nil {
		return h.failed(ctx, Permanent(err))
	}
	id := RunID(childRunID(run.ID, h.in.key(), gen))
	// Record the child in the parent before creating it, so that CancelRun finds it;
	// a cancellation between the two steps is caught by checking the parent after.
	parentRunning := false
	err = h.w.c.b.Update(ctx, run.ID, func(tx backend.Tx) error {
		if parentRunning = tx.Run().Status == backend.Running; !parentRunning {
			return nil
		}
		v, err := tx.Get(childrenKey)
		if err != nil || slices.Contains(strings.Fields(string(v[0])), string(id)) {
			return err
		}
		return tx.Put(childrenKey, []byte(string(v[0])+string(id)+"\n"))
	})
	if err != nil {
		return err
	}
	if parentRunning {
		_, created, err := h.w.c.start(ctx, child, data, run.ID, h.in.key(), WithRunID(id), WithPriority(run.Priority))
		if err != nil {
			return err
		}
		if r, _, err := h.w.c.b.Read(ctx, run.ID); err == nil && r.Status == backend.Cancelled {
			if err := h.w.c.CancelRun(ctx, id, r.Reason); err != nil {
				return err
			}
		}
		if !created {
			// A redelivery, or the reconciler: the child may have ended already, and
			// its notification been lost.
			c, _, err := h.w.c.b.Read(ctx, string(id))
			if err != nil {
				return err
			}
			if c.Status.Final() {
				return h.childEnded(ctx, t, c)
			}
		}
	}
	h.w.ack(ctx, h.d, h.log)
	return nil
}

// childDone completes a subflow node from its child run's end.
func (h *job) childDone(ctx context.Context) error {
	gk := childGenKey(h.in.key())
	run, t, vals, err := h.load(ctx, gk)
	if err != nil {
		return err
	}
	if h.settled(ctx, run, vals) {
		return nil
	}
	child, _, err := h.w.c.b.Read(ctx, childRunID(run.ID, h.in.key(), vals[gk]))
	if err != nil {
		return err
	}
	return h.childEnded(ctx, t, child)
}

// childEnded completes the subflow node from its child run, if the child ended.
func (h *job) childEnded(ctx context.Context, t *Task, child *backend.Run) error {
	switch child.Status {
	case backend.Completed:
		return h.complete(ctx, t, Output{Data: child.Result})
	case backend.Failed:
		return h.failed(ctx, Permanent(fmt.Errorf("subflow run %s failed at node %q: %s", child.ID, child.FailedNode, child.Reason)))
	case backend.Cancelled:
		return h.failed(ctx, Permanent(fmt.Errorf("subflow run %s was cancelled", child.ID)))
	}
	h.w.ack(ctx, h.d, h.log) // a stale notification; the child's end sends another
	return nil
}

// resume completes a wait node with the payload ResumeRun stored.
func (h *job) resume(ctx context.Context) error {
	rk := resumeKey(h.in.key())
	run, t, vals, err := h.load(ctx, rk)
	if err != nil {
		return err
	}
	if h.settled(ctx, run, vals) {
		return nil
	}
	if vals[rk] == nil { // a stale job: the payload went with a rerun
		h.w.ack(ctx, h.d, h.log)
		return nil
	}
	return h.resumeWith(ctx, t, vals[rk])
}

// resumeWith completes a wait node with the payload ResumeRun stored.
func (h *job) resumeWith(ctx context.Context, t *Task, payload []byte) error {
	var p resumePayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return fmt.Errorf("corrupt resume payload: %w", err)
	}
	var err error
	out := Output{Data: p.Output, Action: p.Action}
	if len(out.Data) == 0 {
		if out.Data, err = h.input(t); err != nil {
			return h.failed(ctx, Permanent(err))
		}
	}
	return h.complete(ctx, t, out)
}

// scatter records a batch's items and claims one job per item.
func (h *job) scatter(ctx context.Context, t *Task) error {
	data, err := h.input(t)
	if err != nil {
		return h.failed(ctx, Permanent(err))
	}
	items, err := splitJSONArray(data)
	if err != nil {
		return h.failed(ctx, Permanent(err))
	}
	return h.updateOutput(ctx, len(data), func(x *transition) error {
		return x.scatter(h.in, data, len(items))
	})
}

// execItem runs the batch worker function on one item.
func (h *job) execItem(ctx context.Context, t *Task, scatterRec []byte) error {
	batch, _, err := outputOf(scatterRec)
	if err != nil {
		return err
	}
	items, err := splitJSONArray(batch)
	if err != nil || h.in.item >= len(items) {
		return h.failed(ctx, Permanent(fmt.Errorf("batch item %d missing: %v", h.in.item, err)))
	}
	t.item = items[h.in.item]
	out, err := call(ctx, h.node.Exec, t, h.node.Timeout)
	if err != nil {
		return h.failed(ctx, err)
	}
	return h.updateOutput(ctx, len(out.Data), func(x *transition) error {
		return x.itemDone(h.in, out.Data)
	})
}

// gather collects the items' outputs, in item order.
func (h *job) gather(ctx context.Context, t *Task, scatterRec []byte) error {
	rec, err := decodeRecord(scatterRec)
	if err != nil {
		return err
	}
	sc := h.in.at(h.wf.Nodes[h.node.Scatter])
	keys := make([]string, rec.Items)
	for i := range keys {
		keys[i] = completionKey(instance{node: sc.node, scope: sc.scope, item: i}.key())
	}
	_, vals, err := h.w.c.b.Read(ctx, h.d.Job.Run, keys...)
	if err != nil {
		return err
	}
	items := make([][]byte, len(keys))
	for i, k := range keys {
		out, ok, err := outputOf(vals[k])
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("batch item %d of %q has no output", i, sc.node)
		}
		items[i] = out
	}
	return h.complete(ctx, t, Output{Data: encodeJSONArray(items)})
}

// rerun resets the job's node and its descendants and runs the node again; the run
// fails when the node cannot be rerun.
func (h *job) rerun(ctx context.Context) error {
	node := h.d.Job.Node
	return h.update(ctx, func(x *transition) error {
		if err := x.rerun(node); err != nil {
			x.fail(node, "rerun: "+err.Error())
		}
		return nil
	})
}

// descendants returns node and every node reachable from it, sorted.
func descendants(wf *Workflow, node string) []string {
	seen := map[string]bool{node: true}
	queue := []string{node}
	for len(queue) > 0 {
		n := wf.Nodes[queue[0]]
		queue = queue[1:]
		for _, e := range n.Edges {
			if !seen[e.Target] {
				seen[e.Target] = true
				queue = append(queue, e.Target)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
