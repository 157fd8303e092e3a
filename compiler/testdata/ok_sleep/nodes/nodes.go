// Package nodes holds the node functions of the ok_sleep test case.
package nodes

import (
	"context"
)

// User is the run input.
type User struct{ Email string }

// Reminder is scheduled.
type Reminder struct{ To string }

// Schedule schedules a reminder.
//
//flowgen:node schedule
func Schedule(ctx context.Context, in User) (Reminder, error) { return Reminder{To: in.Email}, nil }

// Remind sends it.
//
//flowgen:node remind
func Remind(ctx context.Context, in Reminder) (Reminder, error) { return in, nil }
