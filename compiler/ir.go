package compiler

// The intermediate form: what analysis produces, what the templates emit from, and what
// `flowgen check -json` prints. Every field is plain data; Go types are carried both as
// printable strings and as *types.Type values (not printed).

import "go/types"

// Program is the analysed form of every blueprint given to one `flowgen gen` call; all of
// its workflows go into one generated package.
type Program struct {
	// Package is the generated package's name.
	Package string `json:"package"`
	// Workflows are sorted by blueprint id.
	Workflows []*Workflow `json:"workflows"`
}

// Workflow is one analysed blueprint.
type Workflow struct {
	ID      string `json:"id"`      // blueprint id, e.g. "order-fulfillment"
	GoName  string `json:"goName"`  // exported Go name, e.g. "OrderFulfillment"
	Version string `json:"version"` // metadata.version, "" when absent
	File    string `json:"file"`    // blueprint path as given on the command line

	// Input is the run's input type; nil when no start node takes an input.
	Input *Type `json:"input,omitempty"`
	// Terminals are the nodes without outgoing edges (fallback-only nodes excluded), sorted.
	Terminals []string `json:"terminals"`
	// Result is the run's result type: the single terminal's output type; nil when there
	// are several terminals (the templates then emit a struct with one pointer field per
	// terminal) or when the single terminal has no output.
	Result *Type `json:"result,omitempty"`
	// Start are the nodes without incoming edges (fallback-only nodes excluded), sorted.
	Start []string `json:"start"`
	// Nodes are sorted by id.
	Nodes []*Node `json:"nodes"`
}

// Node kinds.
const (
	KindFunc         = "func"
	KindSubflow      = "subflow"
	KindBatchScatter = "batch-scatter"
	KindBatchGather  = "batch-gather"
	KindLoop         = "loop-controller"
	KindSleep        = "sleep"
	KindWait         = "wait"
)

// How a node's input value is built from its sources.
const (
	InputNone   = "none"   // the node takes no input
	InputRun    = "run"    // a start node: the run input
	InputSingle = "single" // the output of its only source (Sources[0]), through the edge's transform if any
	InputStruct = "struct" // an `all` join or object `inputs`: a struct with one field per source
	InputSlice  = "slice"  // an `all` join whose input is []T: outputs in Preds order, skipped ones left out
	InputFirst  = "first"  // an `any` join or a loop controller: the output of the predecessor that arrived
	// InputFallback is a fallback-only node's: the input of the failed node it stands in
	// for (whichever node names it as fallback).
	InputFallback = "fallback"
)

// Node is one analysed blueprint node.
type Node struct {
	ID   string `json:"id"`
	Uses string `json:"uses"`
	Kind string `json:"kind"` // one of the Kind constants
	Pos  string `json:"pos"`  // file:line:col of the node in its blueprint

	// Func is the Go function for KindFunc (and the item worker of KindBatchScatter).
	Func *Func `json:"func,omitempty"`

	In  *Type `json:"in,omitempty"`  // input type; nil when the node takes none
	Out *Type `json:"out,omitempty"` // output type seen by successors (the Value of a Routed); nil when none
	// Routed is true when the function returns runtime.Routed[T].
	Routed bool `json:"routed,omitempty"`
	// Actions are the declared actions (routed nodes; "continue"/"break" for loops), sorted.
	Actions []string `json:"actions,omitempty"`

	// Params is the node's params object as a typed Go literal (functions with a params
	// argument); nil otherwise.
	Params *Literal `json:"params,omitempty"`

	// Preds are the predecessors whose arrivals make the node ready, sorted. For a loop
	// controller these are the edges entering the loop; LoopPreds are the back edges.
	Preds     []string `json:"preds,omitempty"`
	LoopPreds []string `json:"loopPreds,omitempty"`
	// Join is "all" or "any".
	Join string `json:"join"`
	// Input says how the input value is built (one of the Input constants).
	Input string `json:"input"`
	// Sources are the nodes whose outputs build the input, each with its edge transform
	// and, for InputStruct, the struct field it fills.
	Sources []Source `json:"sources,omitempty"`

	// Edges are the outgoing edges in blueprint order.
	Edges []Edge `json:"edges,omitempty"`

	// Loop is the innermost loop controller whose body holds this node ("" outside
	// loops); a controller names itself. Depth is the number of enclosing loops.
	Loop  string `json:"loop,omitempty"`
	Depth int    `json:"depth,omitempty"`

	MaxAttempts  int    `json:"maxAttempts"`            // total attempts, >= 1
	RetryDelayMS int    `json:"retryDelayMs,omitempty"` // backoff base
	TimeoutMS    int    `json:"timeoutMs,omitempty"`    // per attempt
	Fallback     string `json:"fallback,omitempty"`     // node run after the last failed attempt
	FallbackOnly bool   `json:"fallbackOnly,omitempty"` // only ever runs as another node's fallback

	SleepMS       int64  `json:"sleepMs,omitempty"`       // KindSleep
	Subflow       string `json:"subflow,omitempty"`       // KindSubflow: child blueprint id
	Gather        string `json:"gather,omitempty"`        // KindBatchScatter: its batch-gather node
	Scatter       string `json:"scatter,omitempty"`       // KindBatchGather: its batch-scatter node
	LoopCondition string `json:"loopCondition,omitempty"` // KindLoop: Go bool expression over out, input, iteration
	MaxIterations int    `json:"maxIterations,omitempty"` // KindLoop: 0 means unlimited
}

// Func is an annotated Go function.
type Func struct {
	Key       string `json:"key"`     // the //flowgen:node key
	PkgPath   string `json:"pkgPath"` // import path of its package
	Name      string `json:"name"`    // function name
	Pos       string `json:"pos"`     // file:line:col of the declaration
	HasInput  bool   `json:"hasInput"`
	HasParams bool   `json:"hasParams"`
	HasOutput bool   `json:"hasOutput"`
}

// Source is one node whose output feeds another node's input.
type Source struct {
	Node      string `json:"node"`
	Field     string `json:"field,omitempty"`     // InputStruct: Go field name filled by this source
	Pointer   bool   `json:"pointer,omitempty"`   // InputStruct: the field is a pointer (nil when skipped)
	Transform string `json:"transform,omitempty"` // Go expression over out and input, from the edge
	Out       *Type  `json:"out,omitempty"`       // the source's output type
}

// Edge is an outgoing edge.
type Edge struct {
	Target    string `json:"target"`
	Action    string `json:"action,omitempty"`
	Condition string `json:"condition,omitempty"` // Go bool expression over out and input
	Pos       string `json:"pos"`
}

// Type is a Go type, printable.
type Type struct {
	// String is the type with full import paths, e.g. "github.com/acme/app/nodes.Order".
	String string `json:"type"`
	// T is the type itself, for the templates.
	T types.Type `json:"-"`
}

// Literal is a params value as a typed Go composite literal, checked against its type.
type Literal struct {
	Type *Type `json:"type"`
	// Exactly one of the following is set.
	Basic  string         `json:"basic,omitempty"`  // Go source of a basic literal, e.g. `"x"`, `3`, `true`
	Fields []LiteralField `json:"fields,omitempty"` // struct fields, in declaration order
	Elems  []*Literal     `json:"elems,omitempty"`  // slice or array elements
	Keys   []*Literal     `json:"keys,omitempty"`   // map keys, parallel to Elems, sorted
	Ptr    *Literal       `json:"ptr,omitempty"`    // pointee of a pointer
	Nil    bool           `json:"nil,omitempty"`    // JSON null
}

// LiteralField is one field of a struct literal.
type LiteralField struct {
	Name  string   `json:"name"`
	Value *Literal `json:"value"`
}
