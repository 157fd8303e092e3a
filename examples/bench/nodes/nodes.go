// Package nodes holds the node functions of the benchmark shapes (the blueprints of
// flowgen bench): integers in, integers out. Every call is counted, so a benchmark can
// check that each node of each run executed exactly once.
package nodes

import (
	"context"
	"sync/atomic"

	"github.com/flowgen/flowgen/runtime"
)

// Executions counts node function calls in this process.
var Executions atomic.Int64

// Step names the node in its params, as the shared bench blueprints do.
type Step struct {
	Step string `json:"step"`
}

// IncParams is bench.inc's params: the step name and what to add (default 1).
type IncParams struct {
	Step string `json:"step"`
	Add  *int   `json:"add"`
}

// Seed starts a run: seed + 1.
//
//flowgen:node bench.seed
func Seed(ctx context.Context, in int, p Step) (int, error) {
	Executions.Add(1)
	return in + 1, nil
}

// Inc adds params.add (default 1).
//
//flowgen:node bench.inc
func Inc(ctx context.Context, in int, p IncParams) (int, error) {
	Executions.Add(1)
	add := 1
	if p.Add != nil {
		add = *p.Add
	}
	return in + add, nil
}

// Branch adds 1 and routes by the parity of its input.
//
//flowgen:node bench.branch actions=odd,even
func Branch(ctx context.Context, in int, p Step) (runtime.Routed[int], error) {
	Executions.Add(1)
	if in%2 != 0 {
		return runtime.Route("odd", in+1), nil
	}
	return runtime.Route("even", in+1), nil
}

// Sum joins integer predecessors: their sum + 1.
//
//flowgen:node bench.sum
func Sum(ctx context.Context, in []int, p Step) (int, error) {
	Executions.Add(1)
	s := 1
	for _, v := range in {
		s += v
	}
	return s, nil
}
