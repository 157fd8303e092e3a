package compiler

import (
	"slices"
	"strings"
)

// loopInputs checks the back edges of every loop controller against what enters the
// loop and records all the controller's sources.
func (g *graph) loopInputs() {
	for _, c := range g.nodes {
		if c.ir.Kind != KindLoop {
			continue
		}
		for _, e := range g.predEdges(c, true) {
			c.ir.Sources = append(c.ir.Sources, source(e))
			if got := g.edgeType(e); got != unknown && c.in != unknown && !fits(defaultType(got), c.in) {
				g.mismatch(e, got, c.id()+" receives "+typeString(c.in)+" where the loop is entered")
			}
		}
	}
}

// checkEdges checks every edge's action and condition and records the outgoing edges in
// the IR.
func (g *graph) checkEdges() {
	for _, e := range g.edges {
		from := e.from
		from.ir.Edges = append(from.ir.Edges, Edge{
			Target:    e.to.id(),
			Action:    e.be.Action,
			Condition: e.be.Condition,
			Pos:       g.edgePos(e).String(),
		})
		if e.be.Action != "" {
			g.checkAction(e)
		}
		if e.be.Condition != "" && from.out != unknown && g.input != unknown {
			v := g.bp.value("edges", e.i, "condition")
			t, err := checkExpr(e.be.Condition, exprScope{out: from.out, input: g.input})
			switch {
			case err != nil:
				g.c.errorf(g.bp.strPos(v, err.off), "%s: condition: %s", e.name(), err.msg)
			case !isBool(t):
				g.c.errorf(g.bp.offPos(v.off), "%s: condition %q is %s, not bool", e.name(), e.be.Condition, typeString(t))
			}
		}
	}
}

// checkAction checks that an edge's action is one its source can return.
func (g *graph) checkAction(e *edge) {
	from, action := e.from, e.be.Action
	pos := g.edgeAt(e, "action")
	switch from.ir.Kind {
	case KindLoop, KindWait, KindBatchScatter:
		// loop actions are checked with the loop; a wait node is resumed with any action;
		// the scatter's edge is checked with the scatter
	case KindFunc:
		switch {
		case from.fn == nil:
		case !from.fn.routed:
			g.c.errorf(pos, "%s: action %q, but %s does not return runtime.Routed[T] and so chooses no action", e.name(), action, from.fn.ir.Name)
		case !slices.Contains(from.fn.actions, action):
			declared := "declares no actions"
			if len(from.fn.actions) > 0 {
				declared = "declares " + quoteJoin(from.fn.actions, ", ")
			}
			g.c.errorf(pos, "%s: action %q is not declared by %s, which %s (//flowgen:node %s actions=%s)",
				e.name(), action, from.fn.ir.Name, declared, from.fn.ir.Key, strings.Join(from.fn.actions, ","))
		}
	default:
		g.c.errorf(pos, "%s: action %q, but a %s node chooses no action", e.name(), action, from.ir.Kind)
	}
}

// checkLoopConditions type-checks the loop controllers' conditions.
func (g *graph) checkLoopConditions() {
	for _, c := range g.nodes {
		if c.ir.LoopCondition == "" || c.out == unknown || g.input == unknown {
			continue
		}
		v := g.param(c, "condition")
		t, err := checkExpr(c.ir.LoopCondition, exprScope{out: c.out, input: g.input, iteration: true})
		switch {
		case err != nil:
			g.c.errorf(g.bp.strPos(v, err.off), "loop-controller %q: condition: %s", c.id(), err.msg)
		case !isBool(t):
			g.c.errorf(g.bp.offPos(v.off), "loop-controller %q: condition %q is %s, not bool", c.id(), c.ir.LoopCondition, typeString(t))
		}
	}
}

// checkFallbacks checks that every fallback is a function node taking the failed node's
// input and returning its output, and that fallbacks do not form a cycle.
func (g *graph) checkFallbacks() {
	for _, n := range g.nodes {
		f := n.fallback
		if f == nil {
			continue
		}
		pos := g.nodeAt(n, "config", "fallback")
		switch {
		case f.ir.Kind != KindFunc:
			g.c.errorf(pos, "node %q: fallback %q must be a function node, not %s", n.id(), f.id(), f.ir.Kind)
		case f.fn == nil || n.in == unknown || n.out == unknown:
		case f.in != nil && !fits(n.in, f.in):
			g.c.errorf(pos, "node %q: fallback %q takes %s, but %q takes %s", n.id(), f.id(), typeString(f.in), n.id(), typeString(n.in))
		case !fits(f.out, n.out):
			g.c.errorf(pos, "node %q: fallback %q returns %s, but %q returns %s", n.id(), f.id(), typeString(f.out), n.id(), typeString(n.out))
		}
	}
	state := make([]uint8, len(g.nodes)) // 0 unseen, 1 on the current chain, 2 done
	for _, n := range g.nodes {
		var chain []*node
		cur := n
		for cur != nil && state[cur.idx] == 0 {
			state[cur.idx] = 1
			chain = append(chain, cur)
			cur = cur.fallback
		}
		if cur != nil && state[cur.idx] == 1 {
			cycle := chain[slices.Index(chain, cur):]
			names := make([]string, 0, len(cycle)+1)
			for _, c := range cycle {
				names = append(names, c.id())
			}
			g.c.errorf(g.nodeAt(cur, "config", "fallback"), "fallbacks form a cycle: %s", quoteJoin(append(names, cur.id()), " -> "))
		}
		for _, c := range chain {
			state[c.idx] = 2
		}
	}
}

// params turns the params of every function node that takes them into a Go literal.
func (g *graph) params() {
	for _, n := range g.nodes {
		if n.ir.Kind != KindFunc || n.fn == nil || n.fn.params == nil {
			continue
		}
		conv := &litConv{bp: g.bp, c: &g.c, prefix: "node " + `"` + n.id() + `": `}
		v := g.bp.value("nodes", n.i, "params")
		if v == nil || v.kind != jObject {
			n.ir.Params = zeroLiteral(n.fn.params)
			continue
		}
		n.ir.Params = conv.convert(v, n.fn.params, "params")
	}
}
