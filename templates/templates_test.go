package templates_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowgen/flowgen/compiler"
	"github.com/flowgen/flowgen/templates"
)

var update = flag.Bool("update", false, "rewrite the golden generated files")

const corpus = "../compiler/testdata"

// TestGolden generates the package of every successful compiler corpus case
// (compiler/testdata/ok_*) into its flows/ and cmd/flows-worker/ directories and
// compares with the files there; -update rewrites them. Generating twice must give
// identical bytes, and the generated packages must pass go vet.
func TestGolden(t *testing.T) {
	cases, err := filepath.Glob(filepath.Join(corpus, "ok_*"))
	if err != nil || len(cases) == 0 {
		t.Fatalf("no corpus cases: %v", err)
	}
	var pkgs []string
	for _, dir := range cases {
		name := filepath.Base(dir)
		files := generate(t, dir)
		if again := generate(t, dir); !sameFiles(files, again) {
			t.Errorf("%s: generating twice gives different output", name)
		}
		for _, f := range files {
			path := filepath.Join(dir, f.Path)
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, f.Content, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s: %v (run go test ./templates -update)", name, err)
				continue
			}
			if !bytes.Equal(f.Content, want) {
				t.Errorf("%s: %s differs from the golden file (run go test ./templates -update to accept):\n%s", name, f.Path, f.Content)
			}
		}
		pkgs = append(pkgs, "./"+filepath.ToSlash(filepath.Join(dir, "flows")), "./"+filepath.ToSlash(filepath.Join(dir, "cmd", "flows-worker")))
	}
	if *update {
		return
	}
	out, err := exec.Command("go", append([]string{"vet"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go vet on the generated packages: %v\n%s", err, out)
	}
}

func generate(t *testing.T, dir string) []templates.File {
	t.Helper()
	blueprints, err := filepath.Glob(filepath.Join(dir, "blueprints", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blueprints {
		blueprints[i], _ = filepath.Rel(dir, b)
	}
	prog, err := compiler.Load(context.Background(), compiler.Config{
		Dir: dir, Nodes: []string{"./nodes"}, Blueprints: blueprints, Package: "flows",
	})
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	files, err := templates.Generate(prog, templates.Options{
		PkgPath:    "github.com/flowgen/flowgen/compiler/testdata/" + filepath.Base(dir) + "/flows",
		PkgDir:     "flows",
		WorkerDir:  "cmd/flows-worker",
		Regenerate: "go test ./templates -update",
	})
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return files
}

func sameFiles(a, b []templates.File) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Path != b[i].Path || !bytes.Equal(a[i].Content, b[i].Content) {
			return false
		}
	}
	return true
}

// TestGoName checks the Go names derived from node ids.
func TestGoName(t *testing.T) {
	for id, want := range map[string]string{"check-inventory": "CheckInventory", "w1": "W1", "a.b_c": "ABC", "9lives": "N9lives"} {
		if got := templates.GoNameForTest(id); got != want {
			t.Errorf("goName(%q) = %q, want %q", id, got, strings.TrimSpace(want))
		}
	}
}
