package templates

import (
	"github.com/dave/jennifer/jen"

	"github.com/flowgen/flowgen/compiler"
)

// tables emits, per workflow, the node id constants and the static description that
// the runtime executes: start and terminal nodes, predecessors, joins, edges, loops and
// policies, all computed at generate time.
func (g *gen) tables(f *jen.File) {
	for _, wf := range g.p.Workflows {
		consts := make([]jen.Code, len(wf.Nodes))
		for i, n := range wf.Nodes {
			consts[i] = jen.Id(g.nodeConst(wf, n.ID)).Op("=").Lit(n.ID)
		}
		f.Commentf("Node ids of blueprint %s.", wf.ID)
		f.Const().Defs(consts...)
		f.Line()

		var nodes fields
		for _, n := range wf.Nodes {
			nodes.set(g.nodeConst(wf, n.ID), g.nodeSpec(wf, n).values())
		}
		var spec fields
		spec.set("ID", jen.Lit(wf.ID))
		spec.set("Version", jen.Lit(wf.Version))
		spec.set("Start", g.idList(wf, wf.Start))
		spec.set("Terminals", g.idList(wf, wf.Terminals))
		spec.set("Nodes", jen.Map(jen.String()).Op("*").Qual(runtimePkg, "Node").Add(nodes.values()))
		f.Commentf("%s is the static description of blueprint %s (%s).", g.workflowVar(wf), wf.ID, wf.File)
		f.Var().Id(g.workflowVar(wf)).Op("=").Op("&").Qual(runtimePkg, "Workflow").Add(spec.values())
		f.Line()
	}
}

func (g *gen) workflowVar(wf *compiler.Workflow) string {
	return g.unique("workflow\x00"+wf.ID, wf.GoName+"Workflow")
}

func (g *gen) nodeConst(wf *compiler.Workflow, node string) string {
	return g.unique("const\x00"+wf.ID+"\x00"+node, wf.GoName+"Node"+goName(node))
}

func (g *gen) idList(wf *compiler.Workflow, ids []string) jen.Code {
	if len(ids) == 0 {
		return jen.Nil()
	}
	codes := make([]jen.Code, len(ids))
	for i, id := range ids {
		codes[i] = jen.Id(g.nodeConst(wf, id))
	}
	return jen.Index().String().Values(codes...)
}

var kinds = map[string]string{
	compiler.KindFunc:         "KindFunc",
	compiler.KindSubflow:      "KindSubflow",
	compiler.KindBatchScatter: "KindBatchScatter",
	compiler.KindBatchGather:  "KindBatchGather",
	compiler.KindLoop:         "KindLoop",
	compiler.KindSleep:        "KindSleep",
	compiler.KindWait:         "KindWait",
}

// fields is a composite literal's key: value list, in the order they were set.
type fields []jen.Code

func (f *fields) set(name string, c jen.Code) { *f = append(*f, jen.Id(name).Op(":").Add(c)) }

// values renders the literal's braces, one field per line.
func (f fields) values() jen.Code {
	return jen.Custom(jen.Options{Open: "{", Close: "}", Separator: ",", Multi: true}, f...)
}

// nodeSpec is the runtime.Node literal of n; zero fields are left out.
func (g *gen) nodeSpec(wf *compiler.Workflow, n *compiler.Node) fields {
	var d fields
	set := d.set
	set("ID", jen.Id(g.nodeConst(wf, n.ID)))
	set("Kind", jen.Qual(runtimePkg, kinds[n.Kind]))
	if n.Join == "any" {
		set("Join", jen.Qual(runtimePkg, "JoinAny"))
	}
	if len(n.Preds) > 0 {
		set("Preds", g.idList(wf, n.Preds))
	}
	if len(n.LoopPreds) > 0 {
		set("LoopPreds", g.idList(wf, n.LoopPreds))
	}
	if len(n.Sources) > 0 {
		ids := make([]string, len(n.Sources))
		for i, s := range n.Sources {
			ids[i] = s.Node
		}
		set("Sources", g.idList(wf, ids))
	}
	if len(n.Edges) > 0 {
		edges := make([]jen.Code, len(n.Edges))
		for i, e := range n.Edges {
			var ed fields
			ed.set("Target", jen.Id(g.nodeConst(wf, e.Target)))
			if e.Action != "" {
				ed.set("Action", jen.Lit(e.Action))
			}
			if e.Condition != "" {
				ed.set("Cond", jen.Qual(runtimePkg, "Cond").Call(jen.Id(g.condIdent(wf, n, i))))
			}
			edges[i] = jen.Values(ed...)
		}
		set("Edges", jen.Index().Qual(runtimePkg, "Edge").Custom(jen.Options{Open: "{", Close: "}", Separator: ",", Multi: true}, edges...))
	}
	if n.Loop != "" {
		set("Loop", jen.Id(g.nodeConst(wf, n.Loop)))
		set("Depth", jen.Lit(n.Depth))
	}
	set("MaxAttempts", jen.Lit(n.MaxAttempts))
	if n.RetryDelayMS > 0 {
		set("RetryDelay", millis(int64(n.RetryDelayMS)))
	}
	if n.TimeoutMS > 0 {
		set("Timeout", millis(int64(n.TimeoutMS)))
	}
	if n.Fallback != "" {
		set("Fallback", jen.Id(g.nodeConst(wf, n.Fallback)))
		set("FallbackExec", jen.Id(g.ident("fallback", wf, n.ID)))
	}
	if (n.Kind == compiler.KindFunc && !n.FallbackOnly) || (n.Kind == compiler.KindBatchScatter && n.Func != nil) {
		set("Exec", jen.Id(g.ident("exec", wf, n.ID)))
	}
	if g.needsInputBytes(n) {
		set("Input", jen.Id(g.ident("inputJSON", wf, n.ID)))
	}
	switch n.Kind {
	case compiler.KindLoop:
		set("LoopCond", jen.Qual(runtimePkg, "LoopCond").Call(jen.Id(g.ident("loopCond", wf, n.ID))))
		if n.MaxIterations > 0 {
			set("MaxIterations", jen.Lit(n.MaxIterations))
		}
	case compiler.KindSleep:
		set("Sleep", millis(n.SleepMS))
	case compiler.KindSubflow:
		set("Subflow", jen.Lit(n.Subflow))
	case compiler.KindBatchScatter:
		set("Gather", jen.Id(g.nodeConst(wf, n.Gather)))
	case compiler.KindBatchGather:
		set("Scatter", jen.Id(g.nodeConst(wf, n.Scatter)))
	}
	return d
}

func millis(ms int64) jen.Code {
	return jen.Lit(int(ms)).Op("*").Qual("time", "Millisecond")
}
