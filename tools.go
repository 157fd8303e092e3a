//go:build tools

// Package tools pins the versions of the development tools that scripts/dev.sh runs
// with `go run`, so every machine and CI lint with the same ones.
package tools

import (
	_ "honnef.co/go/tools/cmd/staticcheck"
)
