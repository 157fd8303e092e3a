// Package nodes holds the node functions of the err_node_id_reserved test case.
package nodes

import (
	"context"
	"github.com/flowgen/flowgen/runtime"
)

// Order is a customer's order.
type Order struct {
	ID     string
	Amount int
}

// Validated is a checked order.
type Validated struct{ Order Order }

// Payment is what charge takes.
type Payment struct{ Amount int }

// Receipt is what charge returns.
type Receipt struct{ ID string }

// Stock is an inventory answer.
type Stock struct{ N int }

// Params are the params of configured.
type Params struct {
	Limit int      `json:"limit"`
	Name  string   `json:"name"`
	Tags  []string `json:"tags"`
}

// Validate checks an order.
//
//flowgen:node validate
func Validate(ctx context.Context, in Order) (Validated, error) { return Validated{Order: in}, nil }

// CheckStock looks the order up in the inventory.
//
//flowgen:node stock
func CheckStock(ctx context.Context, in Order) (Stock, error) { return Stock{}, nil }

// Pay turns a validated order into a payment.
//
//flowgen:node pay
func Pay(ctx context.Context, in Validated) (Payment, error) {
	return Payment{Amount: in.Order.Amount}, nil
}

// Charge charges a payment.
//
//flowgen:node charge
func Charge(ctx context.Context, in Payment) (Receipt, error) { return Receipt{}, nil }

// Triage routes an order.
//
//flowgen:node triage actions=ok,reject
func Triage(ctx context.Context, in Order) (runtime.Routed[Order], error) {
	return runtime.Route("ok", in), nil
}

// Configured takes params.
//
//flowgen:node configured
func Configured(ctx context.Context, in Order, p Params) (Order, error) { return in, nil }

// Source makes an order from nothing.
//
//flowgen:node source
func Source(ctx context.Context) (Order, error) { return Order{}, nil }
