// Package benchflow is the workflow package flowgen generates from the blueprints and node
// functions of examples/bench. Everything but this file is generated.
package benchflow

//go:generate go run -tags flowgen_nobench github.com/flowgen/flowgen/cmd/flowgen gen -nodes ../../bench/nodes -out . -worker ../cmd/benchflow-worker ../../bench/blueprints/*.json
