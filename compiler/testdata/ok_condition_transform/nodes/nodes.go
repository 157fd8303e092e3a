// Package nodes holds the node functions of the ok_condition_transform test case.
package nodes

import (
	"context"
)

// Order is the run input.
type Order struct {
	VIP     bool
	Express bool
	Amount  int
	ShipTo  Address
}

// Address is where a parcel goes.
type Address struct{ Street string }

// Shipment is the result.
type Shipment struct{ Tracking string }

// Prepare prepares.
//
//flowgen:node prepare
func Prepare(ctx context.Context, in Order) (Order, error) { return in, nil }

// Express ships fast.
//
//flowgen:node express
func Express(ctx context.Context, in Order) (Shipment, error) { return Shipment{}, nil }

// Count is a named int.
type Count int

// CountUp takes a Count; the blueprint feeds it an untyped constant.
//
//flowgen:node count
func CountUp(ctx context.Context, in Count) (Count, error) { return in + 1, nil }

// Label prints a label.
//
//flowgen:node label
func Label(ctx context.Context, in Address) (Shipment, error) { return Shipment{}, nil }
