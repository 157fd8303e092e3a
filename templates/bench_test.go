package templates_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowgen/flowgen/compiler"
	"github.com/flowgen/flowgen/templates"
)

// BenchmarkGenerate1000 emits the package of a 1,000-node chain blueprint: the time
// after package loading and analysis (see compiler.BenchmarkLoad1000 for those).
func BenchmarkGenerate1000(b *testing.B) {
	dir, err := filepath.Abs(filepath.Join(corpus, "ok_chain"))
	if err != nil {
		b.Fatal(err)
	}
	var nodes, edges []string
	for i := range 1000 {
		nodes = append(nodes, fmt.Sprintf(`{"id": "s%d", "uses": "step"}`, i))
		if i > 0 {
			edges = append(edges, fmt.Sprintf(`{"source": "s%d", "target": "s%d", "condition": "out.N >= 0"}`, i-1, i))
		}
	}
	file := filepath.Join(b.TempDir(), "chain1000.json")
	data := fmt.Sprintf("{\"id\": \"chain\", \"nodes\": [%s], \"edges\": [%s]}", strings.Join(nodes, ","), strings.Join(edges, ","))
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		b.Fatal(err)
	}
	prog, err := compiler.Load(context.Background(), compiler.Config{Dir: dir, Nodes: []string{"./nodes"}, Blueprints: []string{file}, Package: "flows"})
	if err != nil {
		b.Fatal(err)
	}
	opts := templates.Options{PkgPath: "example.com/flows", PkgDir: "flows", WorkerDir: "cmd/flows-worker"}
	size := 0
	for b.Loop() {
		files, err := templates.Generate(prog, opts)
		if err != nil {
			b.Fatal(err)
		}
		size = 0
		for _, f := range files {
			size += len(f.Content)
		}
	}
	b.ReportMetric(float64(size), "bytes-generated")
}
