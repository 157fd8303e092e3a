package compiler

import (
	"cmp"
	"context"
	"errors"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Config says what to analyse.
type Config struct {
	// Dir is the working directory for package loading and relative file names; ""
	// means the current directory. Go positions below it are reported relative to it.
	Dir string
	// Nodes are Go package patterns holding //flowgen:node functions.
	Nodes []string
	// Blueprints are blueprint JSON files.
	Blueprints []string
	// Package is the generated package's name (Program.Package).
	Package string
}

// Load decodes the blueprints, loads the node packages with golang.org/x/tools/go/packages,
// checks every rule, and returns the IR. On mistakes it returns a nil Program and an
// ErrorList holding all of them, sorted by file, line and column. Other errors (the go
// command cannot run, the context is done) are returned as they are.
func Load(ctx context.Context, cfg Config) (*Program, error) {
	dir, err := workDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	c := &collector{}
	if cfg.Package != "" && !token.IsIdentifier(cfg.Package) {
		c.errorf(noPos, "package name %q is not a Go identifier", cfg.Package)
	}
	bps := decodeFiles(dir, cfg.Blueprints, c)
	funcs, err := loadFuncs(ctx, dir, cfg.Nodes, c)
	if err != nil {
		return nil, err
	}
	prog := analyze(cfg.Package, bps, funcs, c)
	if err := c.err(); err != nil {
		return nil, err
	}
	return prog, nil
}

// workDir returns dir made absolute, or the current directory for "".
func workDir(dir string) (string, error) {
	if dir == "" {
		return os.Getwd()
	}
	return filepath.Abs(dir)
}

// decoded is a blueprint file and whether it decoded without mistakes.
type decoded struct {
	bp    *Blueprint
	clean bool
}

// decodeFiles reads and decodes the blueprint files; names relative to dir are read
// from dir but keep their name in positions.
func decodeFiles(dir string, files []string, c *collector) []decoded {
	var out []decoded
	for _, name := range files {
		path := name
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			c.errorf(token.Position{Filename: name}, "cannot read blueprint: %v", err)
			continue
		}
		bp, err := DecodeBlueprint(name, data)
		if err != nil {
			c.add(err.(ErrorList))
		}
		if bp != nil {
			out = append(out, decoded{bp: bp, clean: err == nil})
		}
	}
	return out
}

// analyzer holds what every blueprint of one Load shares.
type analyzer struct {
	funcs *funcSet
	flows map[string]*flow // by blueprint id
	stack []string         // ids of the blueprints being analysed, for subflow cycles
}

// flow is one blueprint on its way to a Workflow.
type flow struct {
	bp     *Blueprint
	goName string
	clean  bool // decoded without mistakes
	state  flowState
	wf     *Workflow
	errs   ErrorList // this blueprint's analysis mistakes
}

type flowState uint8

const (
	flowPending flowState = iota
	flowRunning
	flowDone
)

// ok reports whether the blueprint was analysed without mistakes, so that subflow nodes
// can trust its input and result types.
func (f *flow) ok() bool { return f.clean && len(f.errs) == 0 }

// analyze checks every blueprint and builds the Program; mistakes go to c.
func analyze(pkg string, bps []decoded, funcs *funcSet, c *collector) *Program {
	a := &analyzer{funcs: funcs, flows: make(map[string]*flow)}
	byGoName := make(map[string]*flow)
	var flows []*flow
	for _, d := range bps {
		bp := d.bp
		if bp.ID == "" {
			continue // reported while decoding
		}
		if prev := a.flows[bp.ID]; prev != nil {
			c.errorf(bp.Pos("id"), "blueprint id %q is already used by %s", bp.ID, prev.bp.File)
			continue
		}
		f := &flow{bp: bp, clean: d.clean}
		name, ok := goName(bp.ID)
		if !ok {
			c.errorf(bp.Pos("id"), "blueprint id %q does not make an exported Go name (got %q)", bp.ID, name)
			f.clean = false
		} else if prev := byGoName[name]; prev != nil {
			c.errorf(bp.Pos("id"), "blueprint ids %q and %q (%s) both make the Go name %s", bp.ID, prev.bp.ID, prev.bp.File, name)
			f.clean = false
		}
		byGoName[name] = f
		f.goName = name
		a.flows[bp.ID] = f
		flows = append(flows, f)
	}
	prog := &Program{Package: pkg, Workflows: []*Workflow{}}
	for _, f := range flows {
		a.workflow(f)
		c.add(f.errs)
		prog.Workflows = append(prog.Workflows, f.wf)
	}
	slices.SortFunc(prog.Workflows, func(x, y *Workflow) int { return strings.Compare(x.ID, y.ID) })
	return prog
}

// workflow analyses f once; subflow nodes call it for their child blueprints first.
func (a *analyzer) workflow(f *flow) {
	if f.state != flowPending {
		return
	}
	f.state = flowRunning
	a.stack = append(a.stack, f.bp.ID)
	g := newGraph(a, f)
	g.check()
	f.wf, f.errs = g.wf, g.c.errs
	a.stack = a.stack[:len(a.stack)-1]
	f.state = flowDone
}

// check runs every stage of the analysis of one blueprint.
func (g *graph) check() {
	g.setupNodes()
	g.setupEdges()
	g.resolveFallbacks()
	g.loops()
	g.sort()
	g.builtins()
	g.starts()
	g.reach()
	g.flow()
	g.loopInputs()
	g.checkEdges()
	g.checkLoopConditions()
	g.checkFallbacks()
	g.params()
	g.finish()
}

// finish fills the remaining IR fields and the workflow's summary.
func (g *graph) finish() {
	wf := g.wf
	if v := g.bp.value("metadata", "version"); v != nil {
		if v.kind == jString {
			wf.Version = v.str
		} else {
			g.c.errorf(g.bp.Pos("metadata", "version"), "metadata.version must be a string, not %s", v.kind)
		}
	}
	if len(g.bp.Nodes) == 0 && g.bp.value("nodes") != nil {
		g.c.errorf(g.bp.Pos("nodes"), "blueprint %q has no nodes", g.bp.ID)
	}
	wf.Input = irType(g.input)
	for _, n := range g.sorted() {
		n.finish()
		wf.Nodes = append(wf.Nodes, n.ir)
		if n.isTerminal() {
			wf.Terminals = append(wf.Terminals, n.id())
		}
	}
	if len(wf.Terminals) == 1 {
		wf.Result = g.byID[wf.Terminals[0]].ir.Out
	}
}

// finish fills the node's IR fields computed from the analysis state.
func (n *node) finish() {
	ir := n.ir
	ir.In, ir.Out = irType(n.in), irType(n.out)
	for _, e := range n.ins {
		if e.back {
			ir.LoopPreds = append(ir.LoopPreds, e.from.id())
		} else {
			ir.Preds = append(ir.Preds, e.from.id())
		}
	}
	slices.Sort(ir.Preds)
	ir.Preds = slices.Compact(ir.Preds)
	slices.Sort(ir.LoopPreds)
	ir.LoopPreds = slices.Compact(ir.LoopPreds)
	ir.Depth = len(n.loops)
	if inner := n.innermostLoop(); inner != nil {
		ir.Loop = inner.id()
	}
	slices.SortFunc(ir.Sources, func(x, y Source) int {
		return cmp.Or(strings.Compare(x.Node, y.Node), strings.Compare(x.Field, y.Field))
	})
}

// isTerminal reports whether n ends the run's path: no outgoing edges (for a loop
// controller: no break edge), not fallback-only, not inside a loop.
func (n *node) isTerminal() bool {
	if n.fallbackOnly || n.insideLoop() {
		return false
	}
	for _, e := range n.outs {
		if n.ir.Kind != KindLoop || e.be.Action == actionBreak {
			return false
		}
	}
	return true
}

// noPos is the position of mistakes that belong to no file.
var noPos token.Position
