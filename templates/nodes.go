package templates

import (
	"fmt"
	"go/types"
	"strconv"

	"github.com/dave/jennifer/jen"

	"github.com/flowgen/flowgen/compiler"
)

// nodes emits the typed adapters between the runtime and the node functions: input
// assembly, the calls, edge conditions, transforms and loop conditions.
func (g *gen) nodes(f *jen.File) {
	for _, wf := range g.p.Workflows {
		for _, n := range wf.Nodes {
			if g.needsInputFunc(wf, n) {
				g.inputFunc(f, wf, n)
			}
			if g.needsInputBytes(n) {
				f.Commentf("%s encodes the input of node %q of %s.", g.ident("inputJSON", wf, n.ID), n.ID, wf.ID)
				f.Func().Id(g.ident("inputJSON", wf, n.ID)).Params(jen.Id("t").Op("*").Qual(runtimePkg, "Task")).
					Params(jen.Index().Byte(), jen.Error()).Block(
					jen.List(jen.Id("in"), jen.Err()).Op(":=").Id(g.ident("input", wf, n.ID)).Call(jen.Id("t")),
					jen.If(jen.Err().Op("!=").Nil()).Block(jen.Return(jen.Nil(), jen.Err())),
					jen.Return(jen.Qual("encoding/json", "Marshal").Call(jen.Id("in"))),
				)
				f.Line()
			}
			switch {
			case n.Kind == compiler.KindFunc && !n.FallbackOnly:
				g.execFunc(f, wf, n, g.ident("exec", wf, n.ID), n, false)
			case n.Kind == compiler.KindBatchScatter && n.Func != nil:
				g.execFunc(f, wf, n, g.ident("exec", wf, n.ID), n, true)
			}
			if n.Fallback != "" {
				if fb := findNode(wf, n.Fallback); fb != nil && fb.Func != nil {
					g.execFunc(f, wf, n, g.ident("fallback", wf, n.ID), fb, false)
				}
			}
			for i, e := range n.Edges {
				if e.Condition == "" {
					continue
				}
				name := g.condIdent(wf, n, i)
				f.Commentf("%s is the condition of edge %s -> %s.", name, n.ID, e.Target)
				f.Func().Id(name).Params(jen.Id("out").Add(irType(n.Out)), jen.Id("input").Add(irType(wf.Input))).Bool().
					Block(jen.Return(jen.Id(e.Condition)))
				f.Line()
			}
			if n.Kind == compiler.KindLoop {
				name := g.ident("loopCond", wf, n.ID)
				f.Commentf("%s is the condition of loop %q: true continues.", name, n.ID)
				f.Func().Id(name).Params(jen.Id("out").Add(irType(n.Out)), jen.Id("input").Add(irType(wf.Input)),
					jen.Id("iteration").Int()).Bool().Block(jen.Return(jen.Id(n.LoopCondition)))
				f.Line()
			}
		}
	}
}

func (g *gen) condIdent(wf *compiler.Workflow, n *compiler.Node, edge int) string {
	return g.ident("cond", wf, n.ID+"-"+strconv.Itoa(edge))
}

// needsInputFunc reports whether n's typed input is built by generated code: for its
// function, its fallback's function, or its encoded built-in input.
func (g *gen) needsInputFunc(wf *compiler.Workflow, n *compiler.Node) bool {
	if n.In == nil || n.Input == compiler.InputNone || n.FallbackOnly {
		return false
	}
	fallback := false
	if n.Fallback != "" {
		fb := findNode(wf, n.Fallback)
		fallback = fb != nil && fb.Func != nil && fb.Func.HasInput
	}
	return (n.Kind == compiler.KindFunc && n.Func != nil && n.Func.HasInput) || fallback || g.needsInputBytes(n)
}

// needsInputBytes reports whether a built-in node's input must be built by generated
// code rather than passed through from its single source by the runtime.
func (g *gen) needsInputBytes(n *compiler.Node) bool {
	switch n.Kind {
	case compiler.KindFunc, compiler.KindLoop, compiler.KindBatchGather:
		return false
	}
	if n.In == nil || n.Input == compiler.InputNone || n.Input == compiler.InputRun || n.Input == compiler.InputFirst {
		return false
	}
	return n.Input != compiler.InputSingle || n.Sources[0].Transform != ""
}

var errReturn = jen.Return(jen.Id("in"), jen.Err())

// inputFunc emits the typed assembly of n's input from its sources.
func (g *gen) inputFunc(f *jen.File, wf *compiler.Workflow, n *compiler.Node) {
	name := g.ident("input", wf, n.ID)
	var body []jen.Code
	body = append(body, jen.Var().Id("in").Add(irType(n.In)))
	transforms := false
	for _, s := range n.Sources {
		transforms = transforms || s.Transform != ""
	}
	if transforms {
		body = append(body,
			jen.Var().Id("input").Add(irType(wf.Input)),
			jen.If(jen.Err().Op(":=").Qual(runtimePkg, "Decode").Call(jen.Id("t").Dot("RunInput").Call(), jen.Op("&").Id("input")),
				jen.Err().Op("!=").Nil()).Block(errReturn))
	}
	decodeInto := func(data, target jen.Code) jen.Code {
		return jen.If(jen.Err().Op(":=").Qual(runtimePkg, "Decode").Call(data, target), jen.Err().Op("!=").Nil()).Block(errReturn)
	}
	// fromSource decodes source s and hands the (transformed) value to use.
	fromSource := func(s compiler.Source, use func(v jen.Code) jen.Code) jen.Code {
		var inner []jen.Code
		inner = append(inner, jen.Var().Id("out").Add(irType(s.Out)), decodeInto(jen.Id("data"), jen.Op("&").Id("out")))
		v := jen.Id("out")
		if s.Transform != "" {
			v = jen.Id(g.transformIdent(wf, n, s.Node)).Call(jen.Id("out"), jen.Id("input"))
		}
		inner = append(inner, use(v))
		return jen.If(jen.List(jen.Id("data"), jen.Id("ok")).Op(":=").Id("t").Dot("Output").Call(jen.Lit(s.Node)), jen.Id("ok")).Block(inner...)
	}
	switch n.Input {
	case compiler.InputRun:
		body = append(body, decodeInto(jen.Id("t").Dot("RunInput").Call(), jen.Op("&").Id("in")))
	case compiler.InputFirst:
		body = append(body, decodeInto(jen.Id("t").Dot("Arrived").Call(), jen.Op("&").Id("in")))
	case compiler.InputSingle:
		s := n.Sources[0]
		if s.Transform == "" {
			body = append(body, jen.If(jen.Err().Op(":=").Id("t").Dot("DecodeOutput").Call(jen.Lit(s.Node), jen.Op("&").Id("in")),
				jen.Err().Op("!=").Nil()).Block(errReturn))
		} else {
			body = append(body, fromSource(s, func(v jen.Code) jen.Code { return jen.Id("in").Op("=").Add(v) }))
		}
	case compiler.InputStruct:
		for _, s := range n.Sources {
			field := jen.Id("in").Dot(s.Field)
			if s.Transform == "" {
				body = append(body, jen.If(jen.Err().Op(":=").Id("t").Dot("DecodeOutput").Call(jen.Lit(s.Node), jen.Op("&").Add(field)),
					jen.Err().Op("!=").Nil()).Block(errReturn))
				continue
			}
			body = append(body, fromSource(s, func(v jen.Code) jen.Code {
				if s.Pointer {
					return jen.Block(jen.Id("v").Op(":=").Add(v), jen.Id("in").Dot(s.Field).Op("=").Op("&").Id("v"))
				}
				return jen.Id("in").Dot(s.Field).Op("=").Add(v)
			}))
		}
	case compiler.InputSlice:
		for _, s := range n.Sources {
			body = append(body, fromSource(s, func(v jen.Code) jen.Code {
				return jen.Id("in").Op("=").Append(jen.Id("in"), v)
			}))
		}
	default:
		g.fail(fmt.Errorf("node %q of %s: unknown input mode %q", n.ID, wf.ID, n.Input))
	}
	body = append(body, jen.Return(jen.Id("in"), jen.Nil()))
	f.Commentf("%s builds the input of node %q of %s.", name, n.ID, wf.ID)
	f.Func().Id(name).Params(jen.Id("t").Op("*").Qual(runtimePkg, "Task")).Params(irType(n.In), jen.Error()).Block(body...)
	f.Line()

	for _, s := range n.Sources {
		if s.Transform == "" {
			continue
		}
		tn := g.transformIdent(wf, n, s.Node)
		f.Commentf("%s is the transform of edge %s -> %s.", tn, s.Node, n.ID)
		f.Func().Id(tn).Params(jen.Id("out").Add(irType(s.Out)), jen.Id("input").Add(irType(wf.Input))).Add(typeCode(transformResult(n, s))).
			Block(jen.Return(jen.Id(s.Transform)))
		f.Line()
	}
}

func (g *gen) transformIdent(wf *compiler.Workflow, n *compiler.Node, src string) string {
	return g.ident("transform", wf, src+"-"+n.ID)
}

// execFunc emits the adapter that runs fn's function for node n: on n's input (or, for
// a batch item, on the item), with fn's params, encoding its output.
func (g *gen) execFunc(f *jen.File, wf *compiler.Workflow, n *compiler.Node, name string, fn *compiler.Node, item bool) {
	fun := fn.Func
	zero := jen.Qual(runtimePkg, "Output").Values()
	var body []jen.Code
	args := []jen.Code{jen.Id("ctx")}
	if fun.HasInput {
		switch {
		case item:
			elem := fn.In.T
			body = append(body,
				jen.Var().Id("in").Add(typeCode(sliceElem(elem))),
				jen.If(jen.Err().Op(":=").Qual(runtimePkg, "Decode").Call(jen.Id("t").Dot("ItemInput").Call(), jen.Op("&").Id("in")),
					jen.Err().Op("!=").Nil()).Block(jen.Return(zero, jen.Err())))
		case n.In != nil && n.Input != compiler.InputNone:
			body = append(body,
				jen.List(jen.Id("in"), jen.Err()).Op(":=").Id(g.ident("input", wf, n.ID)).Call(jen.Id("t")),
				jen.If(jen.Err().Op("!=").Nil()).Block(jen.Return(zero, jen.Err())))
		default:
			body = append(body, jen.Var().Id("in").Add(irType(fn.In)))
		}
		args = append(args, jen.Id("in"))
	}
	if fun.HasParams && fn.Params != nil {
		args = append(args, literal(fn.Params))
	}
	callee := jen.Qual(fun.PkgPath, fun.Name).Call(args...)
	if !fun.HasOutput {
		body = append(body,
			jen.Return(zero, callee))
	} else {
		encode := jen.Qual(runtimePkg, "Encode")
		if fn.Routed {
			encode = jen.Qual(runtimePkg, "EncodeRouted")
		}
		body = append(body,
			jen.List(jen.Id("out"), jen.Err()).Op(":=").Add(callee),
			jen.If(jen.Err().Op("!=").Nil()).Block(jen.Return(zero, jen.Err())),
			jen.Return(encode.Call(jen.Id("out"))))
	}
	what := fmt.Sprintf("node %q of %s", n.ID, wf.ID)
	if fn != n {
		what = fmt.Sprintf("fallback %q in place of node %q of %s", fn.ID, n.ID, wf.ID)
	} else if item {
		what = fmt.Sprintf("one item of batch %q of %s", n.ID, wf.ID)
	}
	f.Commentf("%s runs %s.%s as %s.", name, pkgName(fun.PkgPath), fun.Name, what)
	f.Func().Id(name).Params(jen.Id("ctx").Qual("context", "Context"), jen.Id("t").Op("*").Qual(runtimePkg, "Task")).
		Params(jen.Qual(runtimePkg, "Output"), jen.Error()).Block(body...)
	f.Line()
}

// transformResult is the type a transform into n from s produces: n's input, or for a
// join the struct field (pointee of a pointer field) or slice element s fills.
func transformResult(n *compiler.Node, s compiler.Source) types.Type {
	switch u := n.In.T.Underlying().(type) {
	case *types.Struct:
		if n.Input != compiler.InputStruct {
			break
		}
		for i := range u.NumFields() {
			if f := u.Field(i); f.Name() == s.Field {
				if p, ok := f.Type().(*types.Pointer); ok && s.Pointer {
					return p.Elem()
				}
				return f.Type()
			}
		}
	case *types.Slice:
		if n.Input == compiler.InputSlice {
			return u.Elem()
		}
	}
	return n.In.T
}

// sliceElem is the element type of a slice type.
func sliceElem(t types.Type) types.Type {
	if s, ok := t.Underlying().(*types.Slice); ok {
		return s.Elem()
	}
	return t
}
