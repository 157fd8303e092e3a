package runtime

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// transition applies the completion algorithm inside one backend transaction:
//
//  1. record the completion once (output and routing decision);
//  2. record one arrival per predecessor in each successor's arrival set ("taken" or
//     "skipped"), so a replay adds nothing;
//  3. decide readiness from the set and claim the successor once; only the claimant
//     enqueues it;
//  4. propagate skips to successors that can never run;
//  5. finish the run when no claimed instance is left open.
type transition struct {
	tx  backend.Tx
	run *backend.Run
	wf  *Workflow
	now time.Time
}

func newTransition(tx backend.Tx, wf *Workflow) *transition {
	return &transition{tx: tx, run: tx.Run(), wf: wf, now: time.Now()}
}

// complete records in's completion and propagates it. It reports false when in was
// already complete.
func (x *transition) complete(in instance, rec *record) (bool, error) {
	created, err := x.tx.PutIfAbsent(completionKey(in.key()), rec.encode())
	if err != nil || !created {
		return false, err
	}
	if _, err := x.tx.Incr(openKey, -1); err != nil {
		return false, err
	}
	if err := x.propagate(in, rec); err != nil {
		return false, err
	}
	return true, x.finishIfIdle()
}

// propagate records in's arrival at each successor, taken or skipped.
//
// Edges that cross a loop iteration are the exception: an untaken back edge records
// nothing (the next iteration simply does not exist), and neither does an untaken edge
// leaving the loop, since a later iteration may still take it; endLoop settles those
// when the loop ends. A taken edge leaving a loop also stores the completion under the
// instance key seen from outside the loop, where the nodes after the loop read it.
func (x *transition) propagate(in instance, rec *record) error {
	node := x.wf.Nodes[in.node]
	if node.Kind == KindBatchScatter {
		if !rec.Skipped {
			return nil // a scatter reaches its gather through its items
		}
		gather := x.wf.Nodes[node.Gather]
		return x.arrive(in.successor(node, gather), in, false)
	}
	taken := make(map[int]bool, len(rec.Taken))
	for _, i := range rec.Taken {
		taken[i] = !rec.Skipped
	}
	loopGoesOn := false
	for i, e := range node.Edges {
		target := x.wf.Nodes[e.Target]
		crossing := backEdge(node, target) || leavesLoop(node, target)
		switch {
		case !taken[i] && crossing:
			continue
		case taken[i] && leavesLoop(node, target):
			if err := x.recordExit(in, target, rec); err != nil {
				return err
			}
		case taken[i] && target.Depth >= node.Depth:
			loopGoesOn = true
		}
		if err := x.arrive(in.successor(node, target), in, taken[i]); err != nil {
			return err
		}
	}
	if node.Kind == KindLoop && !loopGoesOn {
		return x.endLoop(in)
	}
	return nil
}

// recordExit stores the completion of in, which took an edge leaving its loop, under
// the key of in as seen from target (its loop iterations dropped), unless an earlier
// iteration already left the loop that way.
func (x *transition) recordExit(in instance, target *Node, rec *record) error {
	outside := instance{node: in.node, scope: in.scope[:target.Depth], item: -1}
	_, err := x.tx.PutIfAbsent(completionKey(outside.key()), rec.encode())
	return err
}

// endLoop is called when iteration ctrl of a loop controller breaks or is skipped: the
// loop is over, so every edge leaving the loop that no iteration took is recorded as
// skipped, and nothing after the loop waits for it.
func (x *transition) endLoop(ctrl instance) error {
	body := make([]string, 0, len(x.wf.Nodes))
	for id, n := range x.wf.Nodes {
		if n.Loop == ctrl.node {
			body = append(body, id)
		}
	}
	sort.Strings(body)
	for _, id := range body {
		n := x.wf.Nodes[id]
		from := instance{node: id, scope: ctrl.scope, item: -1}
		for _, e := range n.Edges {
			if target := x.wf.Nodes[e.Target]; leavesLoop(n, target) {
				if err := x.arrive(from.successor(n, target), from, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// arrive records that from reached target (or was skipped) and claims or skips target
// when that decides it.
func (x *transition) arrive(target, from instance, taken bool) error {
	mark := []byte{'0'}
	if taken {
		mark[0] = '1'
	}
	added, err := x.tx.PutIfAbsent(arrivalKey(target.key(), from.node), mark)
	if err != nil || !added {
		return err
	}
	node := x.wf.Nodes[target.node]
	preds := arrivalPreds(node, target)
	if taken && (node.Join == JoinAny || node.Kind == KindLoop) {
		return x.claim(target, from.key(), 0)
	}
	// Readiness is counted rather than re-read, so an arrival costs the same at a join
	// of 64 predecessors as at one of 2: the arrival set's marks are unique per
	// predecessor, and two counters follow them.
	anyTaken := taken
	if len(preds) > 1 {
		key := target.key()
		arrived, err := x.tx.Incr(arrivedKey(key), 1)
		if err != nil {
			return err
		}
		if taken {
			if _, err := x.tx.Incr(takenKey(key), 1); err != nil {
				return err
			}
		}
		if arrived < int64(len(preds)) {
			return nil // still waiting for a predecessor
		}
		n, err := x.tx.Incr(takenKey(key), 0)
		if err != nil {
			return err
		}
		anyTaken = n > 0
	}
	if !anyTaken {
		return x.skip(target)
	}
	if node.Join == JoinAll && node.Kind != KindLoop {
		return x.claim(target, "", 0)
	}
	return nil // an any-join already claimed by its first arrival
}

// arrivalPreds are the predecessors whose arrivals decide target: for a loop
// controller after its first iteration, the back edges.
func arrivalPreds(node *Node, target instance) []string {
	if node.Kind == KindLoop && target.iteration() > 0 {
		return node.LoopPreds
	}
	return node.Preds
}

// claim marks target ready once and enqueues it, delayed by delay (a run's start).
func (x *transition) claim(target instance, from string, delay time.Duration) error {
	key := target.key()
	won, err := x.tx.PutIfAbsent(claimKey(key), []byte(from))
	if err != nil || !won {
		return err
	}
	if node := x.wf.Nodes[target.node]; node.Kind == KindLoop && node.MaxIterations > 0 && target.iteration() >= node.MaxIterations {
		x.fail(node.ID, fmt.Sprintf("loop exceeded %d iterations", node.MaxIterations))
		return nil
	}
	if _, err := x.tx.Incr(openKey, 1); err != nil {
		return err
	}
	x.enqueue(backend.Exec, key, from, delay)
	return nil
}

// skip records that target can never run and propagates the skip.
func (x *transition) skip(target instance) error {
	rec := &record{Skipped: true}
	created, err := x.tx.PutIfAbsent(completionKey(target.key()), rec.encode())
	if err != nil || !created {
		return err
	}
	return x.propagate(target, rec)
}

func (x *transition) enqueue(kind backend.JobKind, inst, from string, delay time.Duration) {
	j := backend.Job{
		ID: newID(), Run: x.run.ID, Workflow: x.run.Workflow, Version: x.run.Version,
		Kind: kind, Node: inst, From: from, Attempt: 1, Priority: x.run.Priority,
	}
	if delay > 0 {
		j.NotBefore = x.now.Add(delay)
	}
	x.tx.Enqueue(j)
}

// finishIfIdle completes the run when nothing is open.
func (x *transition) finishIfIdle() error {
	open, err := x.tx.Incr(openKey, 0)
	if err != nil || open > 0 || x.run.Status != backend.Running {
		return err
	}
	result, err := x.result()
	if err != nil {
		return err
	}
	x.run.Status = backend.Completed
	x.run.Result = result
	x.notifyParent()
	return nil
}

// result is the terminal node's output, or with several terminals an object of the
// outputs of those that ran, keyed by node id.
func (x *transition) result() ([]byte, error) {
	keys := make([]string, len(x.wf.Terminals))
	for i, t := range x.wf.Terminals {
		keys[i] = completionKey(t)
	}
	vals, err := x.tx.Get(keys...)
	if err != nil {
		return nil, err
	}
	outs := make(map[string]json.RawMessage, len(vals))
	for i, v := range vals {
		if v == nil {
			continue
		}
		rec, err := decodeRecord(v)
		if err != nil {
			return nil, err
		}
		if !rec.Skipped && len(rec.Output) > 0 {
			outs[x.wf.Terminals[i]] = rec.Output
		}
	}
	if len(x.wf.Terminals) == 1 {
		if out, ok := outs[x.wf.Terminals[0]]; ok {
			return out, nil
		}
		return []byte("null"), nil
	}
	return json.Marshal(outs)
}

// fail ends the run as failed at node.
func (x *transition) fail(node, reason string) {
	if x.run.Status != backend.Running {
		return
	}
	x.run.Status = backend.Failed
	x.run.FailedNode = node
	x.run.Reason = reason
	x.notifyParent()
}

// notifyParent enqueues the parent's ChildDone job when a subflow's run ends.
func (x *transition) notifyParent() {
	if x.run.Parent == "" {
		return
	}
	x.tx.Enqueue(backend.Job{
		ID: newID(), Run: x.run.Parent, Kind: backend.ChildDone, Node: x.run.ParentNode,
		Attempt: 1, Priority: x.run.Priority,
	})
}

// scatter completes a batch scatter: it records the batch and claims one job per item,
// or the gather at once for an empty batch.
func (x *transition) scatter(in instance, batch []byte, n int) error {
	data := (&record{Output: batch, Items: n}).encode()
	created, err := x.tx.PutIfAbsent(completionKey(in.key()), data)
	if err != nil || !created {
		return err
	}
	if _, err := x.tx.Incr(openKey, -1); err != nil {
		return err
	}
	if err := x.tx.Put(batchSizeKey(in.key()), []byte(fmt.Sprint(n))); err != nil {
		return err
	}
	for i := range n {
		if err := x.claim(instance{node: in.node, scope: in.scope, item: i}, "", 0); err != nil {
			return err
		}
	}
	if n == 0 {
		if err := x.claimGather(in); err != nil {
			return err
		}
	}
	return x.finishIfIdle()
}

// itemDone records a batch item's output; the last item claims the gather.
func (x *transition) itemDone(item instance, out []byte) error {
	data := (&record{Output: out}).encode()
	created, err := x.tx.PutIfAbsent(completionKey(item.key()), data)
	if err != nil || !created {
		return err
	}
	if _, err := x.tx.Incr(openKey, -1); err != nil {
		return err
	}
	sc := instance{node: item.node, scope: item.scope, item: -1}
	done, err := x.tx.Incr(batchDoneKey(sc.key()), 1)
	if err != nil {
		return err
	}
	size, err := x.tx.Incr(batchSizeKey(sc.key()), 0)
	if err != nil {
		return err
	}
	if done == size {
		if err := x.claimGather(sc); err != nil {
			return err
		}
	}
	return x.finishIfIdle()
}

func (x *transition) claimGather(scatter instance) error {
	node := x.wf.Nodes[scatter.node]
	gather := scatter.successor(node, x.wf.Nodes[node.Gather])
	if _, err := x.tx.PutIfAbsent(arrivalKey(gather.key(), scatter.node), []byte{'1'}); err != nil {
		return err
	}
	return x.claim(gather, scatter.key(), 0)
}

// rerun resets node and its descendants, claims node again and re-enqueues every
// instance that is claimed and not complete (work abandoned when the run ended).
func (x *transition) rerun(node string) error {
	if x.wf.Nodes[node] == nil {
		return fmt.Errorf("workflow %s has no node %q", x.wf.ID, node)
	}
	desc := descendants(x.wf, node)
	inD := make(map[string]bool, len(desc))
	for _, d := range desc {
		n := x.wf.Nodes[d]
		if n.Depth > 0 || n.Kind == KindBatchScatter || n.Kind == KindBatchGather {
			return fmt.Errorf("node %q is inside a loop or a batch; rerun supports nodes outside them", d)
		}
		inD[d] = true
	}
	claimed, err := x.tx.Get(claimKey(node))
	if err != nil {
		return err
	}
	for _, d := range desc {
		n := x.wf.Nodes[d]
		keys := []string{completionKey(d), claimKey(d), waitingKey(d), resumeKey(d), wakeKey(d)}
		for _, p := range append(append([]string(nil), n.Preds...), n.LoopPreds...) {
			if inD[p] {
				keys = append(keys, arrivalKey(d, p))
			}
		}
		if err := x.tx.Delete(keys...); err != nil {
			return err
		}
		if err := x.recount(d); err != nil {
			return err
		}
		if n.Kind == KindSubflow { // the next child is a new run
			if _, err := x.tx.Incr(childGenKey(d), 1); err != nil {
				return err
			}
		}
	}
	if err := x.tx.Put(claimKey(node), claimed[0]); err != nil {
		return err
	}
	open, err := x.requeueOpen(false)
	if err != nil {
		return err
	}
	if err := x.tx.Put(openKey, []byte(fmt.Sprint(open))); err != nil {
		return err
	}
	return x.finishIfIdle()
}

// recount sets the arrival counters of a top-level node from its arrival marks.
func (x *transition) recount(node string) error {
	preds := x.wf.Nodes[node].Preds
	keys := make([]string, len(preds))
	for i, p := range preds {
		keys[i] = arrivalKey(node, p)
	}
	marks, err := x.tx.Get(keys...)
	if err != nil {
		return err
	}
	arrived, taken := 0, 0
	for _, m := range marks {
		if m != nil {
			arrived++
			if m[0] == '1' {
				taken++
			}
		}
	}
	if err := x.tx.Put(arrivedKey(node), []byte(strconv.Itoa(arrived))); err != nil {
		return err
	}
	return x.tx.Put(takenKey(node), []byte(strconv.Itoa(taken)))
}

// requeueOpen enqueues every node instance that is claimed and not complete, and
// returns how many there are. With skipParked, it leaves out, and does not count, the
// instances that wait by design: their jobs are not lost.
func (x *transition) requeueOpen(skipParked bool) (int, error) {
	open, err := x.openInstances()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range open {
		if skipParked {
			if p, err := x.parked(o.key); err != nil || p {
				if err != nil {
					return 0, err
				}
				continue
			}
		}
		x.enqueue(backend.Exec, o.key, o.from, 0)
		n++
	}
	return n, nil
}

// parked reports whether open instance inst waits by design: a sleep before its
// wake-up time (its job is due then) or a wait node waiting to be resumed.
func (x *transition) parked(inst string) (bool, error) {
	in, err := parseInstance(inst)
	if err != nil {
		return false, err
	}
	switch x.wf.Nodes[in.node].Kind {
	case KindSleep:
		v, err := x.tx.Get(wakeKey(inst))
		if err != nil || v[0] == nil {
			return false, err
		}
		wake, err := time.Parse(time.RFC3339Nano, string(v[0]))
		return err == nil && x.now.Before(wake), nil
	case KindWait:
		v, err := x.tx.Get(waitingKey(in.node), resumeKey(inst))
		return err == nil && string(v[0]) == inst && v[1] == nil, err
	}
	return false, nil
}

// openInstance is a node instance claimed and not complete, and its claim (the
// instance whose arrival made it ready, for any-joins and loop controllers).
type openInstance struct{ key, from string }

// openInstances finds the node instances that are claimed and not complete: top-level
// nodes, then, following the claims recorded for them, the iterations of every loop
// and the items of every batch. It reads only recorded facts, so it never finds an
// instance of a branch that was not taken.
func (x *transition) openInstances() ([]openInstance, error) {
	maxDepth := 0
	for _, n := range x.wf.Nodes {
		maxDepth = max(maxDepth, n.Depth)
	}
	atDepth := make([][]*Node, maxDepth+1) // nodes by loop depth, sorted by id
	for _, n := range x.wf.Nodes {
		atDepth[n.Depth] = append(atDepth[n.Depth], n)
	}
	for _, ns := range atDepth {
		sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	}
	var open []openInstance
	var scatters []instance // completed scatter instances, whose items to look at
	scopes := [][]int{nil}  // the loop iterations that exist, outermost first
	for len(scopes) > 0 {
		scope := scopes[0]
		scopes = scopes[1:]
		var ins []instance
		for _, n := range atDepth[len(scope)] {
			ins = append(ins, instance{node: n.ID, scope: scope, item: -1})
		}
		found, done, err := x.claimed(ins)
		if err != nil {
			return nil, err
		}
		open = append(open, found...)
		for _, in := range done {
			if x.wf.Nodes[in.node].Kind == KindBatchScatter {
				scatters = append(scatters, in)
			}
		}
		if len(scope) == maxDepth {
			continue
		}
		for _, n := range atDepth[len(scope)+1] {
			if n.Kind != KindLoop {
				continue
			}
			next, err := x.iterations(n, scope)
			if err != nil {
				return nil, err
			}
			scopes = append(scopes, next...)
		}
	}
	for _, sc := range scatters {
		items, err := x.batchItems(sc)
		if err != nil {
			return nil, err
		}
		found, _, err := x.claimed(items)
		if err != nil {
			return nil, err
		}
		open = append(open, found...)
	}
	return open, nil
}

// claimed sorts instances into those claimed and not complete, and those complete.
func (x *transition) claimed(ins []instance) (open []openInstance, done []instance, err error) {
	if len(ins) == 0 {
		return nil, nil, nil
	}
	keys := make([]string, 0, 2*len(ins))
	for _, in := range ins {
		k := in.key()
		keys = append(keys, claimKey(k), completionKey(k))
	}
	vals, err := x.tx.Get(keys...)
	if err != nil {
		return nil, nil, err
	}
	for i, in := range ins {
		switch claim, rec := vals[2*i], vals[2*i+1]; {
		case rec != nil:
			done = append(done, in)
		case claim != nil:
			open = append(open, openInstance{key: in.key(), from: string(claim)})
		}
	}
	return open, done, nil
}

// iterations returns the scopes of the iterations of loop ctrl that were claimed
// within scope.
func (x *transition) iterations(ctrl *Node, scope []int) ([][]int, error) {
	const probe = 16 // iterations looked up per read
	var out [][]int
	for first := 0; ; first += probe {
		keys := make([]string, probe)
		for i := range keys {
			in := instance{node: ctrl.ID, scope: append(append([]int(nil), scope...), first+i), item: -1}
			keys[i] = claimKey(in.key())
		}
		vals, err := x.tx.Get(keys...)
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			if v == nil {
				return out, nil
			}
			out = append(out, append(append([]int(nil), scope...), first+i))
		}
	}
}

// batchItems returns the item instances of a completed batch scatter.
func (x *transition) batchItems(sc instance) ([]instance, error) {
	v, err := x.tx.Get(completionKey(sc.key()))
	if err != nil || v[0] == nil {
		return nil, err
	}
	rec, err := decodeRecord(v[0])
	if err != nil || rec.Skipped {
		return nil, err
	}
	items := make([]instance, rec.Items)
	for i := range items {
		items[i] = instance{node: sc.node, scope: sc.scope, item: i}
	}
	return items, nil
}
