package compiler

import (
	"go/types"
	"reflect"
)

// joinAny: the first arrival is the input, so every predecessor's output must be
// assignable to it.
func (g *graph) joinAny(n *node, pe []*edge) {
	n.ir.Input = InputFirst
	for _, e := range pe {
		n.ir.Sources = append(n.ir.Sources, source(e))
		got := g.edgeType(e)
		if got == unknown || n.in == unknown {
			continue
		}
		if got == nil || !types.AssignableTo(got, n.in) {
			g.mismatch(e, got, n.id()+` (joinStrategy "any") takes `+typeString(n.in))
		}
	}
}

// joinAll: the input is a struct with one field per predecessor, tagged with its id, or
// a slice []T when every predecessor delivers T.
func (g *graph) joinAll(n *node, pe []*edge) {
	if n.in == unknown {
		n.ir.Input = InputStruct
		return
	}
	switch u := n.in.Underlying().(type) {
	case *types.Slice:
		n.ir.Input = InputSlice
		for _, e := range pe {
			n.ir.Sources = append(n.ir.Sources, source(e))
			if got := g.edgeType(e); got != unknown && !fits(got, u.Elem()) {
				g.mismatch(e, got, n.id()+" takes "+typeString(n.in))
			}
		}
		return
	case *types.Struct:
		if hasFlowgenTag(u) {
			n.ir.Input = InputStruct
			g.joinStruct(n, u, pe)
			return
		}
	}
	g.c.errorf(g.nodePos(n), `node %q joins %s: its input %s must be a struct with a field tagged flowgen:"<predecessor id>" for each predecessor, or a slice`,
		n.id(), quoteJoin(ids(pe), ", "), typeString(n.in))
}

// hasFlowgenTag reports whether a field of st has a flowgen tag, that is whether st is
// meant as a join's input.
func hasFlowgenTag(st *types.Struct) bool {
	for i := range st.NumFields() {
		if _, ok := reflect.StructTag(st.Tag(i)).Lookup("flowgen"); ok {
			return true
		}
	}
	return false
}

// ids returns the ids of the edges' sources.
func ids(pe []*edge) []string {
	s := make([]string, len(pe))
	for i, e := range pe {
		s[i] = e.from.id()
	}
	return s
}

func (g *graph) joinStruct(n *node, st *types.Struct, pe []*edge) {
	preds := make(map[string]bool, len(pe))
	for _, e := range pe {
		preds[e.from.id()] = true
	}
	in := typeString(n.in)
	byTag := make(map[string]*types.Var)
	for i := range st.NumFields() {
		f := st.Field(i)
		tag, ok := reflect.StructTag(st.Tag(i)).Lookup("flowgen")
		switch {
		case !ok || tag == "":
			g.c.errorf(g.nodePos(n), `node %q: field %s of its input %s has no flowgen:"<predecessor id>" tag; every field of a join's input struct names a predecessor`, n.id(), f.Name(), in)
		case !f.Exported():
			g.c.errorf(g.nodePos(n), "node %q: field %s of its input %s is not exported", n.id(), f.Name(), in)
		case byTag[tag] != nil:
			g.c.errorf(g.nodePos(n), "node %q: fields %s and %s of its input %s are both tagged flowgen:%q", n.id(), byTag[tag].Name(), f.Name(), in, tag)
		case !preds[tag]:
			g.c.errorf(g.nodePos(n), "node %q: field %s of its input %s is tagged flowgen:%q, which is not a predecessor of %q (predecessors: %s)",
				n.id(), f.Name(), in, tag, n.id(), quoteJoin(ids(pe), ", "))
		default:
			byTag[tag] = f
		}
	}
	for _, e := range pe {
		src := source(e)
		f := byTag[e.from.id()]
		if f == nil {
			g.c.errorf(g.edgePos(e), "%s: %s's input %s has no field tagged flowgen:%q", e.name(), n.id(), in, e.from.id())
			continue
		}
		src.Field = f.Name()
		got := g.edgeType(e)
		var ok bool
		if ok, src.Pointer = fitsField(got, f.Type()); !ok && got != unknown {
			g.mismatch(e, got, "field "+f.Name()+" of "+in+" is "+typeString(f.Type()))
		}
		n.ir.Sources = append(n.ir.Sources, src)
	}
}

// fitsField reports whether a value of type got fills a struct field of type ft, directly
// or through a pointer (then pointer is true).
func fitsField(got, ft types.Type) (ok, pointer bool) {
	if fits(got, ft) {
		return true, false
	}
	if p, isPtr := ft.(*types.Pointer); isPtr && fits(got, p.Elem()) {
		return true, true
	}
	return false, false
}

// inputs builds a node's input from its "inputs" field: an ancestor's id (its output is
// the input), or an object mapping the input struct's fields, by JSON name, to ancestors.
func (g *graph) inputs(n *node) {
	v := g.bp.value("nodes", n.i, "inputs")
	pos := g.nodeAt(n, "inputs")
	switch {
	case n.ir.Kind != KindFunc:
		g.c.errorf(pos, "node %q: inputs is supported on function nodes only", n.id())
		return
	case n.in == nil:
		g.c.errorf(pos, "node %q: inputs is given but %s takes no input", n.id(), n.fn.ir.Name)
		return
	}
	for _, e := range n.ins {
		if e.be.Transform != "" {
			g.c.errorf(g.edgeAt(e, "transform"), "%s: the transform is unused: %q takes its input from inputs", e.name(), n.id())
		}
	}
	anc := g.reachable([]*node{n}, false, nil)
	ancestor := func(id *jvalue) *node {
		a := g.byID[id.str]
		switch {
		case a == nil:
			g.c.errorf(g.bp.offPos(id.off), "node %q: inputs: %q is not a node of this blueprint", n.id(), id.str)
		case a == n || !anc[a.idx]:
			g.c.errorf(g.bp.offPos(id.off), "node %q: inputs: %q is not an ancestor of %q", n.id(), id.str, n.id())
		default:
			return a
		}
		return nil
	}
	if v.kind == jString {
		n.ir.Input = InputSingle
		a := ancestor(v)
		if a == nil {
			return
		}
		n.ir.Sources = []Source{{Node: a.id(), Out: irType(a.out)}}
		if a.out != unknown && n.in != unknown && !fits(a.out, n.in) {
			g.c.errorf(pos, "node %q: inputs: %s takes %s, %s returns %s", n.id(), n.id(), typeString(n.in), a.id(), typeString(a.out))
		}
		return
	}
	n.ir.Input = InputStruct
	if n.in == unknown {
		return
	}
	st, ok := n.in.Underlying().(*types.Struct)
	if !ok {
		g.c.errorf(pos, "node %q: an inputs object needs a struct input, but %s takes %s", n.id(), n.id(), typeString(n.in))
		return
	}
	fields := jsonFields(st)
	for _, m := range v.members {
		f := lookupField(fields, m.key)
		if f == nil {
			g.c.errorf(g.bp.offPos(m.keyOff), "node %q: inputs: %s has no field with JSON name %q", n.id(), typeString(n.in), m.key)
			continue
		}
		if m.val.kind != jString {
			g.c.errorf(g.bp.offPos(m.val.off), "node %q: inputs.%s must be a node id (a string), not %s", n.id(), m.key, m.val.kind)
			continue
		}
		a := ancestor(m.val)
		if a == nil {
			continue
		}
		src := Source{Node: a.id(), Field: f.goName, Out: irType(a.out)}
		if a.out == unknown {
			continue
		}
		ok, src.Pointer = fitsField(a.out, f.typ)
		if !ok {
			g.c.errorf(g.bp.offPos(m.val.off), "node %q: inputs.%s: field %s of %s is %s, %s returns %s",
				n.id(), m.key, f.goName, typeString(n.in), typeString(f.typ), a.id(), typeString(a.out))
		}
		n.ir.Sources = append(n.ir.Sources, src)
	}
}
