// Package schema holds the Go types of the blueprint format (the Flowcraft blueprint
// JSON) and the JSON Schema generated from them.
package schema

import "encoding/json"

// Blueprint is one workflow: its nodes and the edges between them.
type Blueprint struct {
	// Schema is the optional "$schema" reference of the file.
	Schema string `json:"$schema,omitempty"`
	// ID names the workflow; its Go name is derived from it (order-fulfillment → OrderFulfillment).
	ID string `json:"id" jsonschema:"minLength=1"`
	// Nodes are the steps of the workflow.
	Nodes []Node `json:"nodes"`
	// Edges connect nodes; a node without incoming edges is a start node.
	Edges []Edge `json:"edges"`
	// Metadata is free-form; its "version" string pins in-flight runs to this version.
	Metadata map[string]any `json:"metadata,omitempty"`
}

// Node is one step of a blueprint.
type Node struct {
	// ID is unique within the blueprint.
	ID string `json:"id" jsonschema:"minLength=1"`
	// Uses names a //flowgen:node function key or a built-in node type.
	Uses string `json:"uses" jsonschema:"minLength=1"`
	// Params are decoded into the function's params struct at generate time.
	Params map[string]any `json:"params,omitempty"`
	// Inputs overrides where the node's input comes from: an ancestor node id, or an
	// object mapping input-struct fields (by JSON name) to ancestor node ids.
	Inputs json.RawMessage `json:"inputs,omitempty" jsonschema:"oneof_type=string;object"`
	// Config holds the node's retry, timeout, fallback and join policy.
	Config *NodeConfig `json:"config,omitempty"`
}

// NodeConfig is a node's execution policy.
type NodeConfig struct {
	// MaxRetries is the total number of attempts (default 1).
	MaxRetries *int `json:"maxRetries,omitempty" jsonschema:"minimum=1"`
	// RetryDelay is the base of the exponential backoff between attempts, in milliseconds.
	RetryDelay *int `json:"retryDelay,omitempty" jsonschema:"minimum=0"`
	// Timeout bounds each attempt, in milliseconds.
	Timeout *int `json:"timeout,omitempty" jsonschema:"minimum=1"`
	// Fallback names the node that runs when this one fails after its attempts.
	Fallback string `json:"fallback,omitempty"`
	// JoinStrategy is "all" (the default) or "any".
	JoinStrategy string `json:"joinStrategy,omitempty" jsonschema:"enum=all,enum=any"`
}

// Edge connects a source node to a target node.
type Edge struct {
	// Source is the id of the node the edge leaves.
	Source string `json:"source" jsonschema:"minLength=1"`
	// Target is the id of the node the edge enters.
	Target string `json:"target" jsonschema:"minLength=1"`
	// Action, when set, makes the edge taken only when the source returns this action.
	Action string `json:"action,omitempty"`
	// Condition is a Go boolean expression over out (the source's output) and input (the run input).
	Condition string `json:"condition,omitempty"`
	// Transform is a Go expression over out and input producing the target's input.
	Transform string `json:"transform,omitempty"`
}

// Built-in node types, used in Node.Uses.
const (
	Subflow        = "subflow"
	BatchScatter   = "batch-scatter"
	BatchGather    = "batch-gather"
	LoopController = "loop-controller"
	Sleep          = "sleep"
	Wait           = "wait"
)

// JoinAll and JoinAny are the values of NodeConfig.JoinStrategy.
const (
	JoinAll = "all"
	JoinAny = "any"
)
