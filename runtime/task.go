package runtime

import (
	"context"
	"encoding/json"
	"fmt"
)

// Task is what a node execution sees of its run: the run input and the outputs of the
// node's sources. Generated code reads it; users never need to.
type Task struct {
	Run       RunID
	Node      string
	Attempt   int
	Iteration int // 0-based iteration of the innermost loop, 0 outside loops
	Item      int // batch item index, -1 outside batches

	input   []byte
	outputs map[string][]byte
	arrived []byte
	item    []byte
}

type taskKey struct{}

// TaskFrom returns the task of the node execution ctx belongs to, or nil outside one.
// A node function reads its run, node, attempt, iteration and item from it, e.g. to
// derive an idempotency key for an external effect (run, node, iteration and item stay
// the same across attempts and redeliveries; Attempt grows with each).
func TaskFrom(ctx context.Context) *Task {
	t, _ := ctx.Value(taskKey{}).(*Task)
	return t
}

// RunInput is the run's JSON input.
func (t *Task) RunInput() []byte { return t.input }

// Output returns a source node's JSON output; false when the source was skipped.
func (t *Task) Output(node string) ([]byte, bool) {
	v, ok := t.outputs[node]
	return v, ok
}

// Arrived is the output of the predecessor whose arrival made an any-join or a loop
// controller ready.
func (t *Task) Arrived() []byte { return t.arrived }

// ItemInput is a batch item's JSON input.
func (t *Task) ItemInput() []byte { return t.item }

// Decode decodes JSON data into v; empty data leaves v unchanged.
func Decode(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return Permanent(fmt.Errorf("decode %T: %w", v, err))
	}
	return nil
}

// DecodeOutput decodes a source's output into v, leaving v unchanged when the source
// was skipped.
func (t *Task) DecodeOutput(node string, v any) error {
	data, ok := t.outputs[node]
	if !ok {
		return nil
	}
	if err := Decode(data, v); err != nil {
		return fmt.Errorf("output of %q: %w", node, err)
	}
	return nil
}

// Encode encodes a node function's result.
func Encode(v any) (Output, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Output{}, Permanent(fmt.Errorf("encode %T: %w", v, err))
	}
	return Output{Data: data}, nil
}

// EncodeRouted encodes a routed result: its value and its action.
func EncodeRouted[T any](r Routed[T]) (Output, error) {
	out, err := Encode(r.Value)
	out.Action = r.Action
	return out, err
}
