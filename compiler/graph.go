package compiler

import (
	"strings"
)

// reachable marks the nodes reachable from start, following outgoing edges when forward
// and incoming ones otherwise, never expanding stop (which may be nil).
func (g *graph) reachable(start []*node, forward bool, stop *node) []bool {
	seen := make([]bool, len(g.nodes))
	queue := make([]*node, 0, len(start))
	for _, n := range start {
		if n != stop && !seen[n.idx] {
			seen[n.idx] = true
			queue = append(queue, n)
		}
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		next := n.ins
		if forward {
			next = n.outs
		}
		for _, e := range next {
			m := e.from
			if forward {
				m = e.to
			}
			if m != stop && !seen[m.idx] {
				seen[m.idx] = true
				queue = append(queue, m)
			}
		}
	}
	return seen
}

// loops finds the body of every loop controller: the nodes reachable from its continue
// edges (without passing through it) that lead back to it. Only the controller may
// enter its body and only its break edges may leave it; the edges from the body back to
// the controller are its back edges.
func (g *graph) loops() {
	for _, c := range g.nodes {
		if c.ir.Kind == KindLoop {
			g.loop(c)
		}
	}
	for _, c := range g.nodes {
		if c.body == nil {
			continue
		}
		c.loops = append(c.loops, c)
		for _, n := range g.nodes {
			if c.body[n.idx] {
				n.loops = append(n.loops, c)
			}
		}
	}
}

func (g *graph) loop(c *node) {
	var starts []*node
	for _, e := range c.outs {
		switch e.be.Action {
		case actionContinue:
			starts = append(starts, e.to)
		case actionBreak:
		default:
			g.c.errorf(g.edgeAt(e, "action"), `%s: the edges of loop-controller %q need action "continue" or "break"`, e.name(), c.id())
		}
	}
	if len(starts) == 0 {
		g.c.errorf(g.nodePos(c), `loop-controller %q has no "continue" edge`, c.id())
		return
	}
	fwd := g.reachable(starts, true, c)
	back := g.reachable([]*node{c}, false, nil)
	c.body = make([]bool, len(g.nodes))
	for i := range c.body {
		c.body[i] = fwd[i] && back[i] && g.nodes[i] != c
		if c.body[i] {
			c.bodySize++
		}
	}
	for _, e := range c.outs {
		in := c.body[e.to.idx]
		switch {
		case e.be.Action == actionContinue && !in:
			g.c.errorf(g.edgePos(e), "continue %s does not lead back to %q", e.name(), c.id())
		case e.be.Action == actionBreak && in:
			g.c.errorf(g.edgePos(e), "break %s leads back into the loop of %q", e.name(), c.id())
		}
	}
	for _, n := range g.nodes {
		if !c.body[n.idx] {
			continue
		}
		for _, e := range n.ins {
			if e.from != c && !c.body[e.from.idx] {
				g.c.errorf(g.edgePos(e), "%s enters the loop of %q from outside; only %q may enter it", e.name(), c.id(), c.id())
			}
		}
		for _, e := range n.outs {
			switch {
			case e.to == c:
				e.back = true
			case !c.body[e.to.idx]:
				g.c.errorf(g.edgePos(e), "%s leaves the loop of %q; only the break edges of %q may leave it", e.name(), c.id(), c.id())
			}
		}
	}
}

// sort computes g.order: a topological order of the graph without back edges (Kahn's
// algorithm, starting in blueprint order). Nodes left over lie on or behind cycles that
// no loop controller explains; the cycles are reported and the nodes appended.
func (g *graph) sort() {
	indeg := make([]int, len(g.nodes))
	for _, e := range g.edges {
		if !e.back {
			indeg[e.to.idx]++
		}
	}
	g.order = make([]*node, 0, len(g.nodes))
	for _, n := range g.nodes {
		if indeg[n.idx] == 0 {
			g.order = append(g.order, n)
		}
	}
	for i := 0; i < len(g.order); i++ {
		for _, e := range g.order[i].outs {
			if !e.back {
				if indeg[e.to.idx]--; indeg[e.to.idx] == 0 {
					g.order = append(g.order, e.to)
				}
			}
		}
	}
	if len(g.order) == len(g.nodes) {
		return
	}
	var rest []*node
	for _, n := range g.nodes {
		if indeg[n.idx] > 0 {
			rest = append(rest, n)
			n.skip = true
		}
	}
	g.order = append(g.order, rest...)
	for _, scc := range g.components(rest) {
		g.reportCycle(scc)
	}
}

// components returns the strongly connected components among nodes (Tarjan's
// algorithm over non-back edges) that hold a cycle.
func (g *graph) components(nodes []*node) [][]*node {
	within := make([]bool, len(g.nodes))
	for _, n := range nodes {
		within[n.idx] = true
	}
	index := make([]int, len(g.nodes)) // 0: not visited; else visit number + 1
	low := make([]int, len(g.nodes))
	onStack := make([]bool, len(g.nodes))
	var stack []*node
	var out [][]*node
	counter := 0
	var visit func(n *node)
	visit = func(n *node) {
		counter++
		index[n.idx], low[n.idx] = counter, counter
		stack = append(stack, n)
		onStack[n.idx] = true
		selfLoop := false
		for _, e := range n.outs {
			m := e.to
			if e.back || !within[m.idx] {
				continue
			}
			selfLoop = selfLoop || m == n
			if index[m.idx] == 0 {
				visit(m)
				low[n.idx] = min(low[n.idx], low[m.idx])
			} else if onStack[m.idx] {
				low[n.idx] = min(low[n.idx], index[m.idx])
			}
		}
		if low[n.idx] != index[n.idx] {
			return
		}
		var scc []*node
		for {
			m := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[m.idx] = false
			scc = append(scc, m)
			if m == n {
				break
			}
		}
		if len(scc) > 1 || selfLoop {
			out = append(out, scc)
		}
	}
	for _, n := range nodes {
		if index[n.idx] == 0 {
			visit(n)
		}
	}
	return out
}

// reportCycle reports one cycle through the component scc: the shortest path from its
// first node (in blueprint order) back to itself.
func (g *graph) reportCycle(scc []*node) {
	in := make(map[*node]bool, len(scc))
	s := scc[0]
	for _, n := range scc {
		in[n] = true
		if n.idx < s.idx {
			s = n
		}
	}
	via := make(map[*node]*edge) // how BFS reached each node
	queue := []*node{s}
	var closing *edge
	for len(queue) > 0 && closing == nil {
		n := queue[0]
		queue = queue[1:]
		for _, e := range n.outs {
			if e.back || !in[e.to] {
				continue
			}
			if e.to == s {
				closing = e
				break
			}
			if via[e.to] == nil {
				via[e.to] = e
				queue = append(queue, e.to)
			}
		}
	}
	var rev []*node // closing.from back to s, excluded
	for n := closing.from; n != s; n = via[n].from {
		rev = append(rev, n)
	}
	names := []string{`"` + s.id() + `"`}
	var ctrl *node
	if s.ir.Kind == KindLoop {
		ctrl = s
	}
	for i := len(rev) - 1; i >= 0; i-- {
		names = append(names, `"`+rev[i].id()+`"`)
		if ctrl == nil && rev[i].ir.Kind == KindLoop {
			ctrl = rev[i]
		}
	}
	cycle := strings.Join(append(names, names[0]), " -> ")
	if ctrl == nil {
		g.c.errorf(g.edgePos(closing), "cycle %s does not pass through a loop-controller", cycle)
		return
	}
	g.c.errorf(g.edgePos(closing), `cycle %s is not a loop of loop-controller %q: a loop leaves its controller through a "continue" edge and comes back to it`, cycle, ctrl.id())
}

// reach reports the nodes that no start node leads to (fallback-only nodes excepted).
func (g *graph) reach() {
	var starts []*node
	for _, n := range g.nodes {
		if len(n.ins) == 0 {
			starts = append(starts, n)
		}
	}
	seen := g.reachable(starts, true, nil)
	for _, n := range g.nodes {
		if !seen[n.idx] && !n.fallbackOnly {
			n.skip = true
			g.c.errorf(g.nodePos(n), "node %q is unreachable: no path leads to it from a start node", n.id())
		}
	}
}
