package compiler

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkLoad1000 loads a 1,000-node chain blueprint and reports separately the time
// spent loading the node package (go/packages) and the time spent decoding and
// analysing the blueprint.
func BenchmarkLoad1000(b *testing.B) {
	dir, err := filepath.Abs(filepath.Join("testdata", "ok_chain"))
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "chain1000.json")
	if err := os.WriteFile(file, chainBlueprint(1000), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var loading, analysis time.Duration
	n := 0
	for b.Loop() {
		c := &collector{}
		start := time.Now()
		funcs, err := loadFuncs(ctx, dir, []string{"./nodes"}, c)
		if err != nil {
			b.Fatal(err)
		}
		loaded := time.Now()
		prog := analyze("flows", decodeFiles(dir, []string{file}, c), funcs, c)
		analysis += time.Since(loaded)
		loading += loaded.Sub(start)
		if err := c.err(); err != nil {
			b.Fatal(err)
		}
		if got := len(prog.Workflows[0].Nodes); got != 1000 {
			b.Fatalf("got %d nodes", got)
		}
		n++
	}
	b.ReportMetric(float64(loading.Nanoseconds())/float64(n), "pkgload-ns/op")
	b.ReportMetric(float64(analysis.Nanoseconds())/float64(n), "analysis-ns/op")
}

// chainBlueprint returns a blueprint of n "step" nodes in a chain.
func chainBlueprint(n int) []byte {
	var nodes, edges []string
	for i := range n {
		nodes = append(nodes, fmt.Sprintf(`{"id": "s%d", "uses": "step"}`, i))
		if i > 0 {
			edges = append(edges, fmt.Sprintf(`{"source": "s%d", "target": "s%d", "condition": "out.N >= 0"}`, i-1, i))
		}
	}
	return fmt.Appendf(nil, "{\"id\": \"chain\",\n\"nodes\": [\n%s\n],\n\"edges\": [\n%s\n]}\n",
		strings.Join(nodes, ",\n"), strings.Join(edges, ",\n"))
}
