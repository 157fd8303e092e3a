package compiler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the want files of the testdata corpus")

// TestCorpus loads every case under testdata/<case>/ (blueprints/*.json and the node
// package nodes/) and compares the outcome with want.errors (the expected error lines,
// file names relative to the case directory) or want.ir.json (the IR).
func TestCorpus(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			got, wantFile := loadCase(t, dir)
			if *update {
				for _, f := range []string{"want.errors", "want.ir.json"} {
					if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
						t.Fatal(err)
					}
				}
				if err := os.WriteFile(filepath.Join(dir, wantFile), got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(filepath.Join(dir, wantFile))
			if err != nil {
				t.Fatalf("%v (run go test ./compiler -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs (run go test ./compiler -update to accept)\n--- got:\n%s\n--- want:\n%s", wantFile, got, want)
			}
		})
	}
}

// loadCase runs Load on a corpus case and returns what it produced and which want file
// it is compared with.
func loadCase(t *testing.T, dir string) (got []byte, wantFile string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "blueprints", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir, Nodes: []string{"./nodes"}, Package: "flows"}
	for _, f := range files {
		rel, err := filepath.Rel(dir, f)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Blueprints = append(cfg.Blueprints, rel)
	}
	prog, err := Load(context.Background(), cfg)
	var list ErrorList
	switch {
	case errors.As(err, &list):
		return []byte(list.Error() + "\n"), "want.errors"
	case err != nil:
		t.Fatalf("Load: %v", err)
	}
	data, err := json.MarshalIndent(prog, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(data, '\n'), "want.ir.json"
}

// TestLoadMissingFiles: a blueprint that cannot be read is reported at its name, a node
// package that cannot be loaded by the go command's message, and the nodes whose uses
// may be in that package are not reported as unknown.
func TestLoadMissingFiles(t *testing.T) {
	_, err := Load(context.Background(), Config{
		Dir:        filepath.Join("testdata", "ok_chain"),
		Nodes:      []string{"./nope"},
		Blueprints: []string{"blueprints/order.json", "blueprints/missing.json"},
	})
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("got %v, want two mistakes", err)
	}
	if got, want := list[1].Error(), "blueprints/missing.json: cannot read blueprint: no such file or directory"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := list[0].Error(); !strings.Contains(got, "nope") {
		t.Errorf("got %q, want the go command's message about ./nope", got)
	}
}
