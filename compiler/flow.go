package compiler

import (
	"go/types"
	"slices"
	"strings"

	"github.com/flowgen/flowgen/schema"
)

// starts finds the start nodes and the run input type: every start node that takes an
// input must take the same type.
func (g *graph) starts() {
	var first *node
	for _, n := range g.sorted() {
		if len(n.ins) > 0 || n.fallbackOnly {
			continue
		}
		g.wf.Start = append(g.wf.Start, n.id())
		if n.adopts() || n.ir.Kind == KindBatchGather || n.bn.Inputs != nil || n.in == nil || n.in == unknown {
			continue
		}
		if first == nil {
			first, g.input = n, n.in
		} else if !types.Identical(n.in, first.in) {
			g.c.errorf(g.nodePos(n), "start nodes take different input types: %q takes %s, %q takes %s",
				n.id(), typeString(n.in), first.id(), typeString(first.in))
		}
	}
}

// flow sets how every node's input is built from its sources, in topological order so
// that the nodes passing on what arrives know their predecessors' types.
func (g *graph) flow() {
	for _, n := range g.order {
		switch {
		case n.skip:
			n.ir.Input = InputNone
		case n.fallbackOnly:
			n.ir.Input = InputNone
			if n.in != nil {
				n.ir.Input = InputFallback
			}
		case n.ir.Kind == KindBatchGather:
			n.ir.Input = InputNone
		case n.bn.Inputs != nil:
			g.inputs(n)
		case n.adopts():
			g.adopt(n)
		default:
			g.feed(n)
		}
	}
}

// predEdges returns one edge per predecessor of n (entry edges, or back edges when back
// is set), sorted by predecessor id. Two edges from one predecessor must agree on their
// transform.
func (g *graph) predEdges(n *node, back bool) []*edge {
	var pe []*edge
	first := make(map[*node]*edge, len(n.ins))
	for _, e := range n.ins {
		if e.back != back {
			continue
		}
		if f := first[e.from]; f == nil {
			first[e.from] = e
			pe = append(pe, e)
		} else if f.be.Transform != e.be.Transform {
			g.c.errorf(g.edgePos(e), "%s: its transform differs from that of another edge between the same nodes", e.name())
		}
	}
	slices.SortFunc(pe, func(x, y *edge) int { return strings.Compare(x.from.id(), y.from.id()) })
	return pe
}

// source is the Source an edge gives its target.
func source(e *edge) Source {
	s := Source{Node: e.from.id(), Transform: e.be.Transform}
	if e.from.out != unknown {
		s.Out = irType(e.from.out)
	}
	return s
}

// edgeType returns the type an edge delivers: its transform's type, or else its
// source's output. Transforms are type-checked here, once.
func (g *graph) edgeType(e *edge) types.Type {
	if e.typed {
		return e.typ
	}
	e.typed, e.typ = true, unknown
	out := e.from.out
	switch {
	case out == unknown:
	case e.be.Transform == "":
		e.typ = out
	case g.input != unknown:
		t, err := checkExpr(e.be.Transform, exprScope{out: out, input: g.input})
		if err != nil {
			g.c.errorf(g.bp.strPos(g.bp.value("edges", e.i, "transform"), err.off), "%s: transform: %s", e.name(), err.msg)
		} else {
			e.typ = t
		}
	}
	return e.typ
}

// fits reports whether a value of type got (nil: none) can be the input want: the types
// must be identical, except that an untyped constant only needs to be assignable.
func fits(got, want types.Type) bool {
	if got == nil || want == nil {
		return got == want
	}
	if b, ok := got.(*types.Basic); ok && b.Info()&types.IsUntyped != 0 {
		return types.AssignableTo(got, want)
	}
	return types.Identical(got, want)
}

// mismatch reports that edge e delivers got where something else is expected, as want
// says ("charge takes nodes.Payment").
func (g *graph) mismatch(e *edge, got types.Type, want string) {
	if e.be.Transform != "" {
		g.c.errorf(g.edgeAt(e, "transform"), "%s: %s, the transform yields %s", e.name(), want, typeString(got))
		return
	}
	g.c.errorf(g.edgePos(e), "%s: %s, %s returns %s", e.name(), want, e.from.id(), typeString(got))
}

// feed sets the input of a node whose input type is fixed (a function, subflow or
// batch-scatter) and checks what its predecessors deliver.
func (g *graph) feed(n *node) {
	pe := g.predEdges(n, false)
	switch {
	case len(pe) == 0:
		n.ir.Input = InputRun
		if n.in == nil {
			n.ir.Input = InputNone
		}
	case n.in == nil:
		n.ir.Input = InputNone
		for _, e := range pe {
			if e.be.Transform != "" {
				g.c.errorf(g.edgeAt(e, "transform"), "%s: the transform is unused: %q takes no input", e.name(), n.id())
			}
		}
	case len(pe) == 1:
		n.ir.Input = InputSingle
		n.ir.Sources = []Source{source(pe[0])}
		if got := g.edgeType(pe[0]); got != unknown && n.in != unknown && !fits(got, n.in) {
			g.mismatch(pe[0], got, n.id()+" takes "+typeString(n.in))
		}
	case n.ir.Join == schema.JoinAny:
		g.joinAny(n, pe)
	default:
		g.joinAll(n, pe)
	}
}

// adopt sets the types of a node that passes on what arrives: the run input for a start
// node, else its predecessors' output, which must be one type.
func (g *graph) adopt(n *node) {
	pe := g.predEdges(n, false)
	switch {
	case len(pe) == 0:
		n.in = g.input
		n.ir.Input = InputRun
		if n.in == nil {
			n.ir.Input = InputNone
		}
	case len(pe) == 1 && n.ir.Kind != KindLoop:
		n.in = defaultType(g.edgeType(pe[0]))
		n.ir.Input = InputSingle
		n.ir.Sources = []Source{source(pe[0])}
	default:
		if n.ir.Kind != KindLoop && n.ir.Join != schema.JoinAny {
			g.c.errorf(g.nodePos(n), `%s node %q has several predecessors: set joinStrategy "any" (it passes on the value that arrives first)`, n.ir.Kind, n.id())
		}
		n.ir.Input = InputFirst
		n.in = defaultType(g.edgeType(pe[0]))
		for _, e := range pe {
			n.ir.Sources = append(n.ir.Sources, source(e))
			if got := defaultType(g.edgeType(e)); n.in != unknown && got != unknown && !fits(got, n.in) {
				g.mismatch(e, got, n.id()+" receives "+typeString(n.in)+" from "+pe[0].from.id())
			}
		}
	}
	n.out = n.in
}

// defaultType turns an untyped constant's type into its default type.
func defaultType(t types.Type) types.Type {
	if t == nil {
		return nil
	}
	return types.Default(t)
}
