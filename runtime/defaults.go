package runtime

// The embedded backends are always available; others register when their package is
// imported (the generated worker imports them all).
import (
	_ "github.com/flowgen/flowgen/backends/mem"    // mem://
	_ "github.com/flowgen/flowgen/backends/sqlite" // sqlite://, the default
)
