// Package nodes holds the node functions of the ok_slice_join test case.
package nodes

import (
	"context"
)

// Score is one scorer's answer.
type Score float64

// Text is the run input.
type Text struct{ Body string }

// Scorer scores a text.
//
//flowgen:node score
func Scorer(ctx context.Context, in Text) (Score, error) { return 1, nil }

// Sum adds the scores of the scorers that ran.
//
//flowgen:node sum
func Sum(ctx context.Context, in []Score) (Score, error) { return 0, nil }
