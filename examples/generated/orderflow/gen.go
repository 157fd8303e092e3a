// Package orderflow is the workflow package flowgen generates from the blueprints and node
// functions of examples/order. Everything but this file is generated.
package orderflow

//go:generate go run -tags flowgen_nobench github.com/flowgen/flowgen/cmd/flowgen gen -nodes ../../order/nodes -out . -worker ../cmd/orderflow-worker ../../order/blueprints/order-fulfillment.json
