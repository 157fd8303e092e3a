//go:build flowgen_nobench

package main

import (
	"context"
	"errors"
	"io"
)

// benchCmd is absent from this build. The bench command links the generated benchmark
// workflows, so flowgen is built with -tags flowgen_nobench when it regenerates them
// (see examples/generated/*/gen.go): a stale generated package can then never stop
// its own regeneration.
func benchCmd(context.Context, []string, io.Writer, io.Writer) error {
	return errors.New("bench: this flowgen was built with -tags flowgen_nobench; build it without the tag")
}
