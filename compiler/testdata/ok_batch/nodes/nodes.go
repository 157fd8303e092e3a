// Package nodes holds the node functions of the ok_batch test case.
package nodes

import (
	"context"
)

// Order is the run input.
type Order struct{ Items []Item }

// Item is one line of an order.
type Item struct{ SKU string }

// Result is one item's result.
type Result struct{ OK bool }

// Summary is the run's result.
type Summary struct{ Done int }

// Split splits an order into items.
//
//flowgen:node split
func Split(ctx context.Context, in Order) ([]Item, error) { return in.Items, nil }

// Process handles one item.
//
//flowgen:node process
func Process(ctx context.Context, in Item) (Result, error) { return Result{OK: true}, nil }

// Summarize sums up.
//
//flowgen:node summarize
func Summarize(ctx context.Context, in []Result) (Summary, error) { return Summary{Done: len(in)}, nil }
