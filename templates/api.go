package templates

import (
	"github.com/dave/jennifer/jen"

	"github.com/flowgen/flowgen/compiler"
)

// types emits the result struct of every workflow with several terminal nodes.
func (g *gen) types(f *jen.File) {
	for _, wf := range g.p.Workflows {
		if len(wf.Terminals) < 2 {
			continue
		}
		fields := make([]jen.Code, 0, len(wf.Terminals))
		for _, id := range wf.Terminals {
			n := findNode(wf, id)
			if n == nil || n.Out == nil {
				continue
			}
			fields = append(fields, jen.Id(goName(id)).Op("*").Add(irType(n.Out)).
				Tag(map[string]string{"json": id + ",omitempty"}).Commentf("output of node %q; nil when it did not run", id))
		}
		f.Commentf("%s is the result of a %s run: the outputs of its terminal nodes.", g.resultName(wf), wf.ID)
		f.Type().Id(g.resultName(wf)).Struct(fields...)
		f.Line()
	}
}

func (g *gen) resultName(wf *compiler.Workflow) string {
	return g.unique("result\x00"+wf.ID, wf.GoName+"Result")
}

// resultType is what AwaitXxxRun returns: the terminal's output, the result struct, or
// nothing (struct{}) when the terminal has no output.
func (g *gen) resultType(wf *compiler.Workflow) jen.Code {
	if len(wf.Terminals) >= 2 {
		return jen.Id(g.resultName(wf))
	}
	return irType(wf.Result)
}

// api emits the typed functions a user calls: start, await, resume and Register.
func (g *gen) api(f *jen.File) {
	ctx := jen.Id("ctx").Qual("context", "Context")
	client := jen.Id("c").Op("*").Qual(runtimePkg, "Client")
	runID := jen.Qual(runtimePkg, "RunID")
	for _, wf := range g.p.Workflows {
		name := wf.GoName
		params := []jen.Code{ctx, client}
		input := jen.Nil()
		if wf.Input != nil {
			params = append(params, jen.Id("in").Add(irType(wf.Input)))
			input = jen.Id("in")
		}
		params = append(params, jen.Id("opts").Op("...").Qual(runtimePkg, "StartOption"))
		f.Commentf("Start%sRun starts a run of blueprint %s and returns its id. With", name, wf.ID)
		f.Comment("runtime.WithRunID, starting the same id twice starts one run.")
		f.Func().Id("Start"+name+"Run").Params(params...).Params(runID, jen.Error()).Block(
			jen.Return(jen.Qual(runtimePkg, "Start").Call(jen.Id("ctx"), jen.Id("c"), jen.Id(g.workflowVar(wf)), input, jen.Id("opts").Op("..."))),
		)
		f.Line()

		f.Commentf("Await%sRun waits for a run of blueprint %s and returns its result, or a", name, wf.ID)
		f.Comment("*runtime.RunError saying which node failed and why, or that it was cancelled.")
		f.Func().Id("Await"+name+"Run").Params(ctx, client, jen.Id("id").Add(runID)).Params(jen.Id("res").Add(g.resultType(wf)), jen.Err().Error()).Block(
			jen.List(jen.Id("data"), jen.Err()).Op(":=").Qual(runtimePkg, "Await").Call(jen.Id("ctx"), jen.Id("c"), jen.Id("id")),
			jen.If(jen.Err().Op("!=").Nil()).Block(jen.Return(jen.Id("res"), jen.Err())),
			jen.Err().Op("=").Qual(runtimePkg, "Decode").Call(jen.Id("data"), jen.Op("&").Id("res")),
			jen.Return(jen.Id("res"), jen.Err()),
		)
		f.Line()

		for _, n := range wf.Nodes {
			if n.Kind != compiler.KindWait {
				continue
			}
			fn := "Resume" + name + goName(n.ID)
			f.Commentf("%s continues a run of %s paused at wait node %q: the node", fn, wf.ID, n.ID)
			f.Comment("completes with action (routing its edges) and output.")
			f.Func().Id(fn).Params(ctx, client, jen.Id("id").Add(runID), jen.Id("action").String(), jen.Id("out").Add(irType(n.Out))).Error().Block(
				jen.Return(jen.Id("c").Dot("ResumeRun").Call(jen.Id("ctx"), jen.Id("id"), jen.Lit(n.ID), jen.Id("action"), jen.Id("out"))),
			)
			f.Line()
		}
	}
	wfs := make([]jen.Code, len(g.p.Workflows))
	ids := ""
	for i, wf := range g.p.Workflows {
		wfs[i] = jen.Id(g.workflowVar(wf))
		if i > 0 {
			ids += ", "
		}
		ids += wf.ID
	}
	f.Commentf("Register makes w execute every workflow of this package (%s).", ids)
	f.Func().Id("Register").Params(jen.Id("w").Op("*").Qual(runtimePkg, "Worker")).Block(
		jen.Id("w").Dot("Register").Call(wfs...),
	)
	f.Line()
	f.Comment("Workflows returns the static description of every workflow of this package.")
	f.Func().Id("Workflows").Params().Index().Op("*").Qual(runtimePkg, "Workflow").Block(
		jen.Return(jen.Index().Op("*").Qual(runtimePkg, "Workflow").Values(wfs...)),
	)
}
