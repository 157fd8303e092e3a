package backendtest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowgen/flowgen/runtime"
)

// This file holds a builder for hand-written workflow specs (what flowgen would
// generate) and int-in/int-out node functions built the way generated code builds them.

// intFunc is a node function on ints.
type intFunc func(ctx context.Context, in int) (int, error)

// flow builds a runtime.Workflow by hand and counts the executions of its nodes.
type flow struct {
	wf    *runtime.Workflow
	order []string // node ids in insertion order
	execs sync.Map // node id -> *atomic.Int64
}

func newFlow(id string) *flow {
	return &flow{wf: &runtime.Workflow{ID: id, Nodes: map[string]*runtime.Node{}}}
}

// node adds a node; exec (nil for built-ins) is wrapped to count executions, and opts
// set the remaining fields.
func (f *flow) node(id string, exec runtime.ExecFunc, opts ...func(*runtime.Node)) *flow {
	n := &runtime.Node{ID: id, MaxAttempts: 1}
	if exec != nil {
		n.Exec = f.counted(id, exec)
	}
	for _, o := range opts {
		o(n)
	}
	f.wf.Nodes[id] = n
	f.order = append(f.order, id)
	return f
}

// edge adds an edge from -> to; opts set its action or condition.
func (f *flow) edge(from, to string, opts ...func(*runtime.Edge)) *flow {
	e := runtime.Edge{Target: to}
	for _, o := range opts {
		o(&e)
	}
	n := f.wf.Nodes[from]
	n.Edges = append(n.Edges, e)
	return f
}

// build derives what flowgen computes at generate time: predecessors (back edges of a
// loop go to LoopPreds), sources (the predecessors, unless set), start and terminal
// nodes (fallback-only nodes excluded).
func (f *flow) build() *runtime.Workflow {
	fallbackOnly := map[string]bool{}
	for _, n := range f.wf.Nodes {
		if n.Fallback != "" {
			fallbackOnly[n.Fallback] = true
		}
	}
	preds := map[string][]string{}
	for _, id := range f.order {
		n := f.wf.Nodes[id]
		for _, e := range n.Edges {
			t := f.wf.Nodes[e.Target]
			if t.Kind == runtime.KindLoop && t.ID == n.Loop && n.ID != t.ID {
				t.LoopPreds = append(t.LoopPreds, id)
			} else {
				preds[e.Target] = append(preds[e.Target], id)
			}
			delete(fallbackOnly, e.Target)
		}
	}
	for _, id := range f.order {
		n := f.wf.Nodes[id]
		if n.Preds == nil {
			n.Preds = preds[id]
		}
		if n.Sources == nil {
			n.Sources = n.Preds
		}
		if fallbackOnly[id] {
			continue
		}
		if len(n.Preds) == 0 {
			f.wf.Start = append(f.wf.Start, id)
		}
		if len(n.Edges) == 0 {
			f.wf.Terminals = append(f.wf.Terminals, id)
		}
	}
	return f.wf
}

// counted wraps exec to count its executions under id.
func (f *flow) counted(id string, exec runtime.ExecFunc) runtime.ExecFunc {
	v, _ := f.execs.LoadOrStore(id, new(atomic.Int64))
	n := v.(*atomic.Int64)
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		n.Add(1)
		return exec(ctx, t)
	}
}

// count is how often node id's function ran.
func (f *flow) count(id string) int {
	v, ok := f.execs.Load(id)
	if !ok {
		return 0
	}
	return int(v.(*atomic.Int64).Load())
}

// Node and edge options.

func join(j runtime.Join) func(*runtime.Node) { return func(n *runtime.Node) { n.Join = j } }

func kind(k runtime.Kind) func(*runtime.Node) { return func(n *runtime.Node) { n.Kind = k } }

func attempts(max int, delay time.Duration) func(*runtime.Node) {
	return func(n *runtime.Node) { n.MaxAttempts, n.RetryDelay = max, delay }
}

func timeout(d time.Duration) func(*runtime.Node) { return func(n *runtime.Node) { n.Timeout = d } }

// inLoop puts a node in the body of loop controller ctrl, one loop deep.
func inLoop(ctrl string) func(*runtime.Node) { return inLoopAt(ctrl, 1) }

// inLoopAt puts a node in the body of loop controller ctrl, depth loops deep.
func inLoopAt(ctrl string, depth int) func(*runtime.Node) {
	return func(n *runtime.Node) { n.Loop, n.Depth = ctrl, depth }
}

func action(a string) func(*runtime.Edge) { return func(e *runtime.Edge) { e.Action = a } }

// when sets an edge condition on the source's int output.
func when(cond func(out int) bool) func(*runtime.Edge) {
	return func(e *runtime.Edge) {
		e.Cond = func(_ *runtime.Task, out []byte) (bool, error) {
			var v int
			if err := runtime.Decode(out, &v); err != nil {
				return false, err
			}
			return cond(v), nil
		}
	}
}

// Exec functions, built the way generated code builds them.

// fromRun runs fn on the run input (a start node).
func fromRun(fn intFunc) runtime.ExecFunc {
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		var in int
		if err := runtime.Decode(t.RunInput(), &in); err != nil {
			return runtime.Output{}, err
		}
		return encode(fn(ctx, in))
	}
}

// from runs fn on the output of node src (a node with one source).
func from(src string, fn intFunc) runtime.ExecFunc {
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		var in int
		if err := t.DecodeOutput(src, &in); err != nil {
			return runtime.Output{}, err
		}
		return encode(fn(ctx, in))
	}
}

// fromArrived runs fn on the output of the predecessor that arrived (an any join).
func fromArrived(fn intFunc) runtime.ExecFunc {
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		var in int
		if err := runtime.Decode(t.Arrived(), &in); err != nil {
			return runtime.Output{}, err
		}
		return encode(fn(ctx, in))
	}
}

// fromItem runs fn on a batch item.
func fromItem(fn intFunc) runtime.ExecFunc {
	return func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
		var in int
		if err := runtime.Decode(t.ItemInput(), &in); err != nil {
			return runtime.Output{}, err
		}
		return encode(fn(ctx, in))
	}
}

// joinStruct is an InputStruct-style all join: it decodes each source into a field of
// a struct (pointer fields, nil when the source was skipped) and passes it to fn.
func joinStruct(fn func(in map[string]*int) (int, error), srcs ...string) runtime.ExecFunc {
	return func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
		in := make(map[string]*int, len(srcs))
		for _, s := range srcs {
			var v *int
			if err := t.DecodeOutput(s, &v); err != nil {
				return runtime.Output{}, err
			}
			in[s] = v
		}
		return encode(fn(in))
	}
}

// routed runs fn on the output of src; fn chooses an action.
func routed(src string, fn func(in int) runtime.Routed[int]) runtime.ExecFunc {
	return func(_ context.Context, t *runtime.Task) (runtime.Output, error) {
		var in int
		if err := t.DecodeOutput(src, &in); err != nil {
			return runtime.Output{}, err
		}
		return runtime.EncodeRouted(fn(in))
	}
}

func encode(v int, err error) (runtime.Output, error) {
	if err != nil {
		return runtime.Output{}, err
	}
	return runtime.Encode(v)
}

func add(k int) intFunc {
	return func(_ context.Context, in int) (int, error) { return in + k, nil }
}

func mul(k int) intFunc {
	return func(_ context.Context, in int) (int, error) { return in * k, nil }
}

// sum adds the sources that ran.
func sum(in map[string]*int) (int, error) {
	s := 0
	for _, v := range in {
		if v != nil {
			s += *v
		}
	}
	return s, nil
}

// intCond is a loop condition on the int arriving at the controller.
func intCond(cond func(out, iteration int) bool) func(*runtime.Node) {
	return func(n *runtime.Node) {
		n.LoopCond = func(_ *runtime.Task, out []byte, iteration int) (bool, error) {
			var v int
			if err := runtime.Decode(out, &v); err != nil {
				return false, err
			}
			return cond(v, iteration), nil
		}
	}
}
