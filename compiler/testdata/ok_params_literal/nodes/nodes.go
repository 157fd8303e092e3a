// Package nodes holds the node functions of the ok_params_literal test case.
package nodes

import (
	"context"
)

// Request is the run input.
type Request struct{ Path string }

// Limits are nested params.
type Limits struct {
	Max   int     `json:"max"`
	Ratio float64 `json:"ratio"`
}

// Base is embedded in FetchParams; its fields are promoted.
type Base struct {
	Region string `json:"region"`
}

// Level is a named integer.
type Level uint8

// FetchParams are fetch's params.
type FetchParams struct {
	Base
	URL     string            `json:"url"`
	Retries *int              `json:"retries,omitempty"`
	Limits  Limits            `json:"limits"`
	Tags    []string          `json:"tags"`
	Headers map[string]string `json:"headers"`
	Backup  *Limits           `json:"backup"`
	Extra   any               `json:"extra"`
	Level   Level             `json:"level"`
	Skip    bool
	IDs     [3]int64 `json:"ids"`
	Nothing *string  `json:"nothing"`
	Ignored string   `json:"-"`
	hidden  int
}

// Fetch fetches.
//
//flowgen:node fetch
func Fetch(ctx context.Context, in Request, p FetchParams) (Request, error) {
	_ = p.hidden
	return in, nil
}

// Free takes no params argument, so its blueprint params are not checked.
//
//flowgen:node free
func Free(ctx context.Context, in Request) (Request, error) { return in, nil }
