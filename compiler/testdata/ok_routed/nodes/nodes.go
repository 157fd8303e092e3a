// Package nodes holds the node functions of the ok_routed test case.
package nodes

import (
	"context"
	"github.com/flowgen/flowgen/runtime"
)

// Post is the run input.
type Post struct{ Text string }

// Verdict is what each branch returns.
type Verdict struct{ Published bool }

// Triage decides.
//
//flowgen:node triage actions=ban,approve
func Triage(ctx context.Context, in Post) (runtime.Routed[Post], error) {
	return runtime.Route("approve", in), nil
}

// Publish publishes.
//
//flowgen:node publish
func Publish(ctx context.Context, in Post) (Verdict, error) { return Verdict{Published: true}, nil }

// Ban bans.
//
//flowgen:node ban
func Ban(ctx context.Context, in Post) (Verdict, error) { return Verdict{}, nil }

// Review queues for a human; it returns nothing.
//
//flowgen:node review
func Review(ctx context.Context, in Post) error { return nil }
