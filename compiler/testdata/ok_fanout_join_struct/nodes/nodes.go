// Package nodes holds the node functions of the ok_fanout_join_struct test case.
package nodes

import (
	"context"
)

// Order is the run input.
type Order struct{ ID string }

// Stock says whether the order can be served.
type Stock struct{ Available bool }

// Price is a quote.
type Price struct{ Total int }

// Decision is the result.
type Decision struct{ OK bool }

// DecideIn joins the inventory check and the quote; the quote may be skipped.
type DecideIn struct {
	Inventory Stock  `flowgen:"checkInventory"`
	Price     *Price `flowgen:"quote"`
}

// Receive accepts an order.
//
//flowgen:node receive
func Receive(ctx context.Context, in Order) (Order, error) { return in, nil }

// Inventory checks the stock.
//
//flowgen:node inventory
func Inventory(ctx context.Context, in Order) (Stock, error) { return Stock{}, nil }

// Quote prices the order.
//
//flowgen:node quote
func Quote(ctx context.Context, in Order) (Price, error) { return Price{}, nil }

// Decide joins both.
//
//flowgen:node decide
func Decide(ctx context.Context, in DecideIn) (Decision, error) { return Decision{}, nil }
