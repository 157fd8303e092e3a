// Package nodes holds the node functions of the ok_loop test case.
package nodes

import (
	"context"
)

// Topic is the run input.
type Topic struct {
	Title     string
	MaxRounds int
}

// Draft goes round the loops.
type Draft struct {
	Text  string
	Score int
}

// Post is the result.
type Post struct{ URL string }

// Write writes a first draft.
//
//flowgen:node write
func Write(ctx context.Context, in Topic) (Draft, error) { return Draft{}, nil }

// Improve improves a draft.
//
//flowgen:node improve
func Improve(ctx context.Context, in Draft) (Draft, error) { return in, nil }

// Score scores a draft.
//
//flowgen:node score
func Score(ctx context.Context, in Draft) (Draft, error) { return in, nil }

// Publish publishes.
//
//flowgen:node publish
func Publish(ctx context.Context, in Draft) (Post, error) { return Post{}, nil }
