// Package nodes holds the node functions of the ok_wait test case.
package nodes

import (
	"context"
)

// Request is the run input.
type Request struct{ Who string }

// Ticket waits for a human.
type Ticket struct{ ID string }

// Outcome is each branch's result.
type Outcome struct{ Granted bool }

// Open opens a ticket.
//
//flowgen:node request
func Open(ctx context.Context, in Request) (Ticket, error) { return Ticket{}, nil }

// Grant grants.
//
//flowgen:node grant
func Grant(ctx context.Context, in Ticket) (Outcome, error) { return Outcome{Granted: true}, nil }

// Deny denies.
//
//flowgen:node deny
func Deny(ctx context.Context, in Ticket) (Outcome, error) { return Outcome{}, nil }
