// Package all registers every backend flowgen ships, for programs that choose the
// backend by URL at run time, such as the generated worker binaries.
package all

import (
	_ "github.com/flowgen/flowgen/backends/aws"      // aws://
	_ "github.com/flowgen/flowgen/backends/azure"    // azure://
	_ "github.com/flowgen/flowgen/backends/mem"      // mem://
	_ "github.com/flowgen/flowgen/backends/postgres" // postgres://, postgresql://
	_ "github.com/flowgen/flowgen/backends/redis"    // redis://, rediss://
	_ "github.com/flowgen/flowgen/backends/sqlite"   // sqlite://
)
