package compiler

import (
	"go/token"
	"go/types"
	"slices"
	"strings"

	"github.com/flowgen/flowgen/schema"
)

// builtinKinds maps the built-in uses values to node kinds.
var builtinKinds = map[string]string{
	schema.Subflow:        KindSubflow,
	schema.BatchScatter:   KindBatchScatter,
	schema.BatchGather:    KindBatchGather,
	schema.LoopController: KindLoop,
	schema.Sleep:          KindSleep,
	schema.Wait:           KindWait,
}

// The actions of a loop controller's edges.
const (
	actionContinue = "continue"
	actionBreak    = "break"
)

// graph is the analysis state of one blueprint.
type graph struct {
	a     *analyzer
	bp    *Blueprint
	c     collector
	wf    *Workflow
	nodes []*node          // valid nodes in blueprint order
	byID  map[string]*node // valid nodes by id
	edges []*edge          // valid edges in blueprint order
	order []*node          // topological order ignoring loop back edges; nodes on cycles last
	input types.Type       // the run input type; nil when none
}

// node is the analysis state of one blueprint node.
type node struct {
	idx int // index in graph.nodes
	i   int // index in the blueprint's nodes array
	bn  *schema.Node
	ir  *Node
	fn  *nodeFunc // KindFunc, and the worker of KindBatchScatter
	// in and out are the node's input and output types: nil for none, unknown when an
	// earlier mistake hides them.
	in, out   types.Type
	ins, outs []*edge
	fallback  *node   // the node run when this one fails
	fallbacks []*node // the nodes this one is the fallback of
	// fallbackOnly is set for a node without edges that is someone's fallback.
	fallbackOnly bool
	// skip is set for nodes on a cycle or unreachable (both reported): their inputs are
	// not checked, so that one mistake is not reported many times.
	skip     bool
	body     []bool  // loop controllers: which nodes (by idx) are in the loop body
	bodySize int     // loop controllers: how many nodes the body holds
	loops    []*node // the controllers whose loop holds this node (itself, for one)
}

// edge is the analysis state of one valid blueprint edge.
type edge struct {
	i        int // index in the blueprint's edges array
	be       *schema.Edge
	from, to *node
	back     bool // goes from a loop body back to its controller
	typ      types.Type
	typed    bool // typ is computed
}

func newGraph(a *analyzer, f *flow) *graph {
	return &graph{
		a:    a,
		bp:   f.bp,
		byID: make(map[string]*node),
		wf: &Workflow{
			ID: f.bp.ID, GoName: f.goName, File: f.bp.File,
			Terminals: []string{}, Start: []string{}, Nodes: []*Node{},
		},
	}
}

func (n *node) id() string { return n.bn.ID }

// adopts reports whether the node passes on what arrives (sleep, wait, loop controller):
// its input and output types are those of its predecessors.
func (n *node) adopts() bool {
	switch n.ir.Kind {
	case KindSleep, KindWait, KindLoop:
		return true
	}
	return false
}

// insideLoop reports whether n is in the body of a loop (a controller is not in its own).
func (n *node) insideLoop() bool {
	for _, l := range n.loops {
		if l != n {
			return true
		}
	}
	return false
}

// innermostLoop returns the loop controller with the smallest loop that holds n.
func (n *node) innermostLoop() *node {
	var best *node
	for _, l := range n.loops {
		if best == nil || l.bodySize < best.bodySize {
			best = l
		}
	}
	return best
}

// nodePos is where mistakes about a node as a whole are reported: its id.
func (g *graph) nodePos(n *node) token.Position { return g.bp.Pos("nodes", n.i, "id") }

// nodeAt is the position of a value inside a node: nodeAt(n, "config", "fallback").
func (g *graph) nodeAt(n *node, path ...any) token.Position {
	return g.bp.Pos(append([]any{"nodes", n.i}, path...)...)
}

// param returns the node's params value named key, or nil.
func (g *graph) param(n *node, key string) *jvalue { return g.bp.value("nodes", n.i, "params", key) }

func (g *graph) edgePos(e *edge) token.Position { return g.bp.Pos("edges", e.i) }

// edgeAt is the position of one field of an edge.
func (g *graph) edgeAt(e *edge, field string) token.Position { return g.bp.Pos("edges", e.i, field) }

// name prints an edge for messages: edge "a" -> "b".
func (e *edge) name() string { return `edge "` + e.from.id() + `" -> "` + e.to.id() + `"` }

// sorted returns the nodes sorted by id.
func (g *graph) sorted() []*node {
	s := slices.Clone(g.nodes)
	slices.SortFunc(s, func(x, y *node) int { return strings.Compare(x.id(), y.id()) })
	return s
}

// reservedIDChars may not appear in node ids: run state keys node instances as
// "node@iteration#item" and separate key parts with "|".
const reservedIDChars = "@#|"

// setupNodes creates the nodes, resolves their uses and reads their config.
func (g *graph) setupNodes() {
	for i := range g.bp.Nodes {
		bn := &g.bp.Nodes[i]
		if bn.ID == "" {
			continue // reported while decoding
		}
		if strings.ContainsAny(bn.ID, reservedIDChars) {
			g.c.errorf(g.bp.Pos("nodes", i, "id"), "node id %q contains one of %q, which name loop iterations and batch items in run state", bn.ID, reservedIDChars)
		}
		if prev := g.byID[bn.ID]; prev != nil {
			p := g.nodePos(prev)
			g.c.errorf(g.bp.Pos("nodes", i, "id"), "duplicate node id %q (first at line %d, column %d)", bn.ID, p.Line, p.Column)
			continue
		}
		n := &node{idx: len(g.nodes), i: i, bn: bn, in: unknown, out: unknown}
		n.ir = &Node{ID: bn.ID, Uses: bn.Uses, Pos: g.bp.Pos("nodes", i).String(), Join: schema.JoinAll, MaxAttempts: 1}
		g.nodes = append(g.nodes, n)
		g.byID[bn.ID] = n
		g.resolveUses(n)
		g.config(n)
	}
}

// resolveUses sets the node's kind and, for functions, its types.
func (g *graph) resolveUses(n *node) {
	if kind := builtinKinds[n.bn.Uses]; kind != "" {
		n.ir.Kind = kind
		return
	}
	n.ir.Kind = KindFunc
	fn := g.a.funcs.byKey[n.bn.Uses]
	switch {
	case n.bn.Uses == "" || fn == nil && g.a.funcs.incomplete:
		// reported while decoding, or may be in a node package with errors
	case fn == nil:
		g.c.errorf(g.nodeAt(n, "uses"), "node %q: unknown uses %q: no //flowgen:node function has this key and it is not a built-in", n.id(), n.bn.Uses)
	case !fn.bad:
		n.fn = fn
		n.in, n.out = fn.in, fn.out
		n.ir.Func = fn.ir
		n.ir.Routed = fn.routed
		n.ir.Actions = fn.actions
	}
}

// config reads the node's retry, timeout, fallback and join policy.
func (g *graph) config(n *node) {
	c := n.bn.Config
	if c == nil {
		return
	}
	if c.MaxRetries != nil {
		if *c.MaxRetries < 1 {
			g.c.errorf(g.nodeAt(n, "config", "maxRetries"), "node %q: maxRetries is the total number of attempts and must be at least 1", n.id())
		} else {
			n.ir.MaxAttempts = *c.MaxRetries
		}
	}
	if c.RetryDelay != nil {
		if *c.RetryDelay < 0 {
			g.c.errorf(g.nodeAt(n, "config", "retryDelay"), "node %q: retryDelay must not be negative", n.id())
		} else {
			n.ir.RetryDelayMS = *c.RetryDelay
		}
	}
	if c.Timeout != nil {
		if *c.Timeout < 0 {
			g.c.errorf(g.nodeAt(n, "config", "timeout"), "node %q: timeout must not be negative", n.id())
		} else {
			n.ir.TimeoutMS = *c.Timeout
		}
	}
	switch c.JoinStrategy {
	case "", schema.JoinAll:
	case schema.JoinAny:
		n.ir.Join = schema.JoinAny
	default:
		g.c.errorf(g.nodeAt(n, "config", "joinStrategy"), "node %q: unknown joinStrategy %q (want %q or %q)", n.id(), c.JoinStrategy, schema.JoinAll, schema.JoinAny)
	}
}

// setupEdges connects the nodes; edges naming unknown nodes are reported and dropped.
func (g *graph) setupEdges() {
	for i := range g.bp.Edges {
		be := &g.bp.Edges[i]
		from, to := g.byID[be.Source], g.byID[be.Target]
		if from == nil && be.Source != "" {
			g.c.errorf(g.bp.Pos("edges", i, "source"), "edge source %q is not a node of this blueprint", be.Source)
		}
		if to == nil && be.Target != "" {
			g.c.errorf(g.bp.Pos("edges", i, "target"), "edge target %q is not a node of this blueprint", be.Target)
		}
		if from == nil || to == nil {
			continue
		}
		e := &edge{i: i, be: be, from: from, to: to}
		g.edges = append(g.edges, e)
		from.outs = append(from.outs, e)
		to.ins = append(to.ins, e)
	}
}

// resolveFallbacks links each node to its fallback and finds the fallback-only nodes.
func (g *graph) resolveFallbacks() {
	for _, n := range g.nodes {
		if n.bn.Config == nil || n.bn.Config.Fallback == "" {
			continue
		}
		name := n.bn.Config.Fallback
		n.ir.Fallback = name
		f := g.byID[name]
		switch {
		case f == nil:
			g.c.errorf(g.nodeAt(n, "config", "fallback"), "node %q: fallback %q is not a node of this blueprint", n.id(), name)
		case f == n:
			g.c.errorf(g.nodeAt(n, "config", "fallback"), "node %q cannot be its own fallback", n.id())
		default:
			n.fallback = f
			f.fallbacks = append(f.fallbacks, n)
		}
	}
	for _, n := range g.nodes {
		n.fallbackOnly = len(n.fallbacks) > 0 && len(n.ins) == 0 && len(n.outs) == 0
		n.ir.FallbackOnly = n.fallbackOnly
	}
}
