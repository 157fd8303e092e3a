// Package nodes holds the node functions of the ok_any_join test case.
package nodes

import (
	"context"
	"fmt"
)

// Question is the run input.
type Question struct{ Text string }

// Short is the fast answer.
type Short struct{ Text string }

// String implements fmt.Stringer.
func (s Short) String() string { return s.Text }

// Long is the slow answer.
type Long struct{ Text string }

// String implements fmt.Stringer.
func (l Long) String() string { return l.Text }

// Ask passes the question on.
//
//flowgen:node ask
func Ask(ctx context.Context, in Question) (Question, error) { return in, nil }

// Fast answers fast.
//
//flowgen:node fast
func Fast(ctx context.Context, in Question) (Short, error) { return Short{}, nil }

// Slow answers slowly.
//
//flowgen:node slow
func Slow(ctx context.Context, in Question) (Long, error) { return Long{}, nil }

// First takes whichever answer arrives first.
//
//flowgen:node first
func First(ctx context.Context, in fmt.Stringer) (string, error) { return in.String(), nil }
