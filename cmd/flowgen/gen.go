package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"

	"github.com/flowgen/flowgen/compiler"
	"github.com/flowgen/flowgen/templates"
)

// listFlag collects a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// genCmd runs `flowgen gen` (write=true) or `flowgen check`.
func genCmd(ctx context.Context, args []string, stdout, stderr io.Writer, write bool) error {
	name := "gen"
	if !write {
		name = "check"
	}
	fs := flag.NewFlagSet("flowgen "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var nodes listFlag
	fs.Var(&nodes, "nodes", "Go package patterns holding the //flowgen:node functions (repeatable or comma-separated)")
	out := fs.String("out", "", "directory of the generated package (required)")
	pkg := fs.String("pkg", "", "name of the generated package (default: the base name of -out)")
	worker := fs.String("worker", "", "directory of the worker's main.go (default: cmd/<pkg>-worker at the module root; \"none\" for no worker)")
	asJSON := fs.Bool("json", false, "check: print the analysed intermediate form as JSON")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flowgen %s -nodes PATTERNS -out DIR [flags] BLUEPRINT.json...\n\n", name)
		if write {
			fmt.Fprint(stderr, "Generates the typed workflow package for the blueprints into -out, and the\nworker binary's main.go into -worker.\n\n")
		} else {
			fmt.Fprint(stderr, "Checks the blueprints against the node functions and writes nothing.\n\n")
		}
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(nodes) == 0 || *out == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "flowgen "+name+": -nodes, -out and at least one blueprint are required")
		fs.Usage()
		return errUsage
	}
	if *pkg == "" {
		abs, err := filepath.Abs(*out)
		if err != nil {
			return err
		}
		*pkg = filepath.Base(abs)
	}
	blueprints, err := expandGlobs(fs.Args())
	if err != nil {
		return err
	}
	prog, err := compiler.Load(ctx, compiler.Config{Nodes: nodes, Blueprints: blueprints, Package: *pkg})
	if err != nil {
		return report(stderr, err)
	}
	if !write {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(prog)
		}
		return nil
	}
	opts, err := layout(*out, *worker, *pkg)
	if err != nil {
		return err
	}
	opts.Regenerate = "flowgen gen " + strings.Join(args, " ")
	files, err := templates.Generate(prog, opts)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f.Path, f.Content, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// expandGlobs expands the patterns among the blueprint arguments, for go:generate lines,
// which no shell expands.
func expandGlobs(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		if !strings.ContainsAny(a, "*?[") {
			out = append(out, a)
			continue
		}
		matches, err := filepath.Glob(a)
		if err != nil {
			return nil, fmt.Errorf("blueprint pattern %q: %w", a, err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("blueprint pattern %q matches no file", a)
		}
		out = append(out, matches...)
	}
	return out, nil
}

// layout resolves the generated package's import path from the enclosing module and
// the worker's directory.
func layout(out, worker, pkg string) (templates.Options, error) {
	absOut, err := filepath.Abs(out)
	if err != nil {
		return templates.Options{}, err
	}
	root, modPath, err := findModule(absOut)
	if err != nil {
		return templates.Options{}, err
	}
	rel, err := filepath.Rel(root, absOut)
	if err != nil {
		return templates.Options{}, err
	}
	o := templates.Options{PkgDir: filepath.ToSlash(out), PkgPath: modPath}
	if rel != "." {
		o.PkgPath += "/" + filepath.ToSlash(rel)
	}
	switch worker {
	case "none":
	case "":
		cwd, err := os.Getwd()
		if err != nil {
			return o, err
		}
		dir, err := filepath.Rel(cwd, filepath.Join(root, "cmd", pkg+"-worker"))
		if err != nil {
			return o, err
		}
		o.WorkerDir = filepath.ToSlash(dir)
	default:
		o.WorkerDir = filepath.ToSlash(worker)
	}
	return o, nil
}

// findModule walks up from dir to the go.mod and returns its directory and module path.
func findModule(dir string) (string, string, error) {
	for d := dir; ; {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil {
			mod := modfile.ModulePath(data)
			if mod == "" {
				return "", "", fmt.Errorf("%s: no module path", filepath.Join(d, "go.mod"))
			}
			return d, mod, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", "", fmt.Errorf("no go.mod above %s: the generated package must be inside a Go module", dir)
		}
		d = parent
	}
}
