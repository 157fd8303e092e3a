// Package nodes holds the node functions of the ok_subflow test case.
package nodes

import (
	"context"
)

// Order is the parent's run input.
type Order struct{ Amount int }

// Payment is the child's run input.
type Payment struct{ Amount int }

// Auth is an authorization.
type Auth struct{ Code string }

// Receipt is the child's result.
type Receipt struct{ ID string }

// Done is the parent's result.
type Done struct{ Receipt Receipt }

// Prepare makes a payment.
//
//flowgen:node prepare
func Prepare(ctx context.Context, in Order) (Payment, error) { return Payment(in), nil }

// Authorize authorizes.
//
//flowgen:node authorize
func Authorize(ctx context.Context, in Payment) (Auth, error) { return Auth{}, nil }

// Capture captures.
//
//flowgen:node capture
func Capture(ctx context.Context, in Auth) (Receipt, error) { return Receipt{}, nil }

// Finish finishes.
//
//flowgen:node finish
func Finish(ctx context.Context, in Receipt) (Done, error) { return Done{Receipt: in}, nil }
