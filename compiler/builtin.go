package compiler

import (
	"go/types"
	"slices"
	"strconv"
)

// builtins reads the params of the built-in nodes and sets the types that do not depend
// on the data flow: a subflow's (its child blueprint's), a batch-scatter's (its
// worker's) and a batch-gather's (its scatter's).
func (g *graph) builtins() {
	for _, n := range g.nodes {
		switch n.ir.Kind {
		case KindSleep:
			g.sleep(n)
		case KindSubflow:
			g.subflow(n)
		case KindBatchScatter:
			g.scatter(n)
		case KindLoop:
			g.loopParams(n)
		case KindWait:
			g.waitActions(n)
		}
	}
	for _, n := range g.nodes {
		if n.ir.Kind == KindBatchGather {
			g.gather(n)
		}
	}
}

// stringParam returns the string params value key of n; missing or not a string is
// reported (need describes what the value is for) and returns nil.
func (g *graph) stringParam(n *node, key, need string) *jvalue {
	v := g.param(n, key)
	switch {
	case v == nil:
		g.c.errorf(g.nodePos(n), "%s node %q needs params.%s: %s", n.ir.Kind, n.id(), key, need)
		return nil
	case v.kind != jString:
		g.c.errorf(g.nodeAt(n, "params", key), "node %q: params.%s must be a string (%s), not %s", n.id(), key, need, v.kind)
		return nil
	}
	return v
}

func (g *graph) sleep(n *node) {
	const need = `milliseconds, or a string such as "10s", "5m", "1h", "2d"`
	v := g.param(n, "duration")
	switch {
	case v == nil:
		g.c.errorf(g.nodePos(n), "sleep node %q needs params.duration (%s)", n.id(), need)
	case v.kind == jNumber:
		ms, err := strconv.ParseInt(v.str, 10, 64)
		if err != nil || ms < 0 {
			g.c.errorf(g.nodeAt(n, "params", "duration"), "node %q: params.duration must be a whole, non-negative number of milliseconds, not %s", n.id(), v.str)
		}
		n.ir.SleepMS = ms
	case v.kind == jString:
		ms, err := parseDuration(v.str)
		if err != nil {
			g.c.errorf(g.nodeAt(n, "params", "duration"), "node %q: params.duration: %v", n.id(), err)
		}
		n.ir.SleepMS = ms
	default:
		g.c.errorf(g.nodeAt(n, "params", "duration"), "node %q: params.duration must be a number or a string (%s), not %s", n.id(), need, v.kind)
	}
}

func (g *graph) subflow(n *node) {
	v := g.stringParam(n, "blueprintId", "the id of another blueprint given to flowgen")
	if v == nil {
		return
	}
	id := v.str
	n.ir.Subflow = id
	pos := g.nodeAt(n, "params", "blueprintId")
	child := g.a.flows[id]
	switch {
	case child == nil:
		g.c.errorf(pos, "node %q: subflow blueprint %q is not among the blueprints given", n.id(), id)
		return
	case child.state == flowRunning:
		cycle := g.a.stack[slices.Index(g.a.stack, id):]
		g.c.errorf(pos, "node %q: subflows form a cycle: %s -> %q", n.id(), quoteJoin(cycle, " -> "), id)
		return
	}
	g.a.workflow(child)
	if !child.ok() {
		return // the child's own mistakes are reported
	}
	if child.wf.Input != nil {
		n.in = child.wf.Input.T
	} else {
		n.in = nil
	}
	switch t := child.wf.Terminals; {
	case len(t) > 1:
		g.c.errorf(pos, "node %q: subflow %q has several terminal nodes (%s): not supported yet", n.id(), id, quoteJoin(t, ", "))
	case child.wf.Result != nil:
		n.out = child.wf.Result.T
	default:
		n.out = nil
	}
}

// scatter checks a batch-scatter's worker and its one edge, to its batch-gather.
func (g *graph) scatter(n *node) {
	n.out = nil // its only successor, the gather, takes no input
	if len(n.outs) != 1 || n.outs[0].to.ir.Kind != KindBatchGather {
		g.c.errorf(g.nodePos(n), "batch-scatter %q needs exactly one outgoing edge, to its batch-gather node", n.id())
		n.out = unknown
	} else {
		e := n.outs[0]
		for _, field := range []string{"action", "condition", "transform"} {
			if g.bp.value("edges", e.i, field) != nil {
				g.c.errorf(g.edgeAt(e, field), "%s: the edge from a batch-scatter to its batch-gather takes no %s", e.name(), field)
			}
		}
		n.ir.Gather = e.to.id()
	}
	v := g.stringParam(n, "workerUsesKey", "the //flowgen:node key of the function run for each item")
	if v == nil {
		return
	}
	pos := g.nodeAt(n, "params", "workerUsesKey")
	fn := g.a.funcs.byKey[v.str]
	switch {
	case fn == nil && g.a.funcs.incomplete:
	case fn == nil:
		g.c.errorf(pos, "node %q: worker %q is not the key of a //flowgen:node function", n.id(), v.str)
	case fn.bad:
		// reported at the function
	case !fn.ir.HasInput || !fn.ir.HasOutput || fn.ir.HasParams || fn.routed:
		g.c.errorf(pos, "node %q: worker %s must be func(ctx context.Context, item T) (U, error)", n.id(), fn.ir.Name)
	default:
		n.fn = fn
		n.ir.Func = fn.ir
		n.in = types.NewSlice(fn.in)
	}
}

// gather checks that a batch-gather's only predecessor is its batch-scatter and sets its
// output, the slice of the worker's results.
func (g *graph) gather(n *node) {
	n.in = nil
	if len(n.ins) != 1 || n.ins[0].from.ir.Kind != KindBatchScatter {
		g.c.errorf(g.nodePos(n), "batch-gather %q must have exactly one incoming edge, from its batch-scatter", n.id())
		return
	}
	s := n.ins[0].from
	n.ir.Scatter = s.id()
	if s.fn != nil {
		n.out = types.NewSlice(s.fn.out)
	}
}

func (g *graph) loopParams(n *node) {
	n.ir.Actions = []string{actionBreak, actionContinue}
	if v := g.stringParam(n, "condition", "a Go bool expression over out, input and iteration"); v != nil {
		n.ir.LoopCondition = v.str
	}
	if v := g.param(n, "maxIterations"); v != nil {
		m, err := strconv.Atoi(v.str)
		if v.kind != jNumber || err != nil || m < 0 {
			g.c.errorf(g.nodeAt(n, "params", "maxIterations"), "node %q: params.maxIterations must be a whole, non-negative number", n.id())
		}
		n.ir.MaxIterations = m
	}
}

// waitActions collects the actions of a wait node's edges: a wait node is resumed from
// outside with any action.
func (g *graph) waitActions(n *node) {
	for _, e := range n.outs {
		if a := e.be.Action; a != "" {
			n.ir.Actions = append(n.ir.Actions, a)
		}
	}
	slices.Sort(n.ir.Actions)
	n.ir.Actions = slices.Compact(n.ir.Actions)
}
