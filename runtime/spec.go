package runtime

import (
	"context"
	"time"
)

// Workflow is the static description of one blueprint, computed by flowgen at generate
// time and emitted as a Go literal. A worker never analyses a blueprint at run time.
type Workflow struct {
	ID        string
	Version   string
	Start     []string // nodes that receive the run input
	Terminals []string // nodes whose outputs form the result
	Nodes     map[string]*Node
}

// Kind is a node's type.
type Kind uint8

// Node kinds: a Go function, or one of the built-ins.
const (
	KindFunc Kind = iota
	KindSubflow
	KindBatchScatter
	KindBatchGather
	KindLoop
	KindSleep
	KindWait
)

// Join is how a node with several predecessors becomes ready.
type Join uint8

// Join strategies.
const (
	// JoinAll waits until every predecessor delivered or was skipped.
	JoinAll Join = iota
	// JoinAny fires once, on the first arrival.
	JoinAny
)

// Node is the static description of one node.
type Node struct {
	ID   string
	Kind Kind
	Join Join
	// Preds are the predecessors whose arrivals make the node ready; for a loop
	// controller, the edges entering the loop. LoopPreds are a controller's back edges.
	Preds     []string
	LoopPreds []string
	// Sources are the nodes whose outputs the input is built from.
	Sources []string
	Edges   []Edge
	// Loop is the innermost loop controller around the node (a controller names itself),
	// Depth the number of enclosing loops.
	Loop  string
	Depth int

	MaxAttempts int           // total attempts, at least 1
	RetryDelay  time.Duration // base of the exponential backoff
	Timeout     time.Duration // per attempt; 0 for none
	Fallback    string        // node run in this one's place after its last attempt

	// Exec runs a function node (for a batch scatter: one item).
	Exec ExecFunc
	// FallbackExec runs the Fallback node's function on this node's input.
	FallbackExec ExecFunc
	// Input builds a built-in node's input; nil passes its single source through.
	Input func(t *Task) ([]byte, error)

	LoopCond      func(t *Task, out []byte, iteration int) (bool, error) // KindLoop: true continues
	MaxIterations int                                                    // KindLoop: 0 for no limit
	Sleep         time.Duration                                          // KindSleep
	Subflow       string                                                 // KindSubflow: the child workflow id
	Gather        string                                                 // KindBatchScatter: its gather node
	Scatter       string                                                 // KindBatchGather: its scatter node
}

// Edge is an outgoing edge.
type Edge struct {
	Target string
	Action string
	// Cond, when set, must hold for the edge to be taken.
	Cond func(t *Task, out []byte) (bool, error)
}

// ExecFunc runs a node: it decodes the node's typed input from t, calls the node
// function and encodes its output.
type ExecFunc func(ctx context.Context, t *Task) (Output, error)

// Output is a node's encoded output and the action it chose.
type Output struct {
	Data   []byte
	Action string
}

// Loop controller actions.
const (
	ActionContinue = "continue"
	ActionBreak    = "break"
)
