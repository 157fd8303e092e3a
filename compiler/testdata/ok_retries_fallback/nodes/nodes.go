// Package nodes holds the node functions of the ok_retries_fallback test case.
package nodes

import (
	"context"
	"github.com/flowgen/flowgen/runtime"
)

// Payment is the run input.
type Payment struct{ Amount int }

// Receipt is what charging returns.
type Receipt struct{ ID string }

// Charge charges.
//
//flowgen:node charge
func Charge(ctx context.Context, in Payment) (Receipt, error) { return Receipt{}, nil }

// Queue queues the payment for later; the failure is in runtime.FailureFrom(ctx).
//
//flowgen:node queue
func Queue(ctx context.Context, in Payment) (Receipt, error) {
	_ = runtime.FailureFrom(ctx)
	return Receipt{ID: "later"}, nil
}

// Email sends the receipt.
//
//flowgen:node email
func Email(ctx context.Context, in Receipt) error { return nil }

// Log stands in for email.
//
//flowgen:node log
func Log(ctx context.Context, in Receipt) error { return nil }
