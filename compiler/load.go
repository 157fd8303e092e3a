package compiler

import (
	"context"
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/tools/go/packages"
)

// runtimePath is the import path of the package that defines Routed.
const runtimePath = "github.com/flowgen/flowgen/runtime"

// directive is the comment that marks a node function.
const directive = "//flowgen:node"

// nodeFunc is an annotated Go function as analysis sees it.
type nodeFunc struct {
	ir  *Func
	pos token.Position // the function's name
	// bad is set when the function cannot be used (unsupported signature, not exported,
	// its key claimed twice); the mistake is already reported and nodes using it are not
	// checked further.
	bad     bool
	in      types.Type // nil when the function takes no input
	params  types.Type // nil when it takes no params
	out     types.Type // nil when it returns only an error; T for runtime.Routed[T]
	routed  bool
	actions []string // declared actions, sorted
}

// funcSet is the annotated functions of the node packages.
type funcSet struct {
	byKey map[string]*nodeFunc
	// incomplete is set when a node package has errors: a key not found may belong to
	// one of its functions, so unknown keys are not reported.
	incomplete bool
}

// loadMode is what analysis needs from go/packages: the syntax for doc comments and the
// types for signatures. Dependencies come from export data.
const loadMode = packages.NeedSyntax | packages.NeedTypes

// loadFuncs loads the packages matching patterns (relative to dir) and returns their
// annotated functions. Mistakes go to c; the error is for a failure to run the go
// command at all.
func loadFuncs(ctx context.Context, dir string, patterns []string, c *collector) (*funcSet, error) {
	funcs := &funcSet{byKey: make(map[string]*nodeFunc)}
	if len(patterns) == 0 {
		return funcs, nil
	}
	fset := token.NewFileSet()
	cfg := &packages.Config{Mode: loadMode, Context: ctx, Dir: dir, Fset: fset}
	pkgs, err := packages.Load(cfg, patterns...)
	if err != nil {
		return nil, fmt.Errorf("loading node packages: %w", err)
	}
	reported := len(c.errs)
	s := &funcScanner{dir: dir, fset: fset, c: c, byKey: make(map[string][]*nodeFunc)}
	packages.Visit(pkgs, nil, func(p *packages.Package) {
		for _, e := range packageErrors(p) {
			c.errorf(s.rel(parsePos(e.Pos)), "%s", e.Msg)
		}
	})
	for _, p := range pkgs {
		if p.Types == nil {
			funcs.incomplete = true
			continue
		}
		s.broken = p.IllTyped || len(p.Errors) > 0
		funcs.incomplete = funcs.incomplete || s.broken
		for _, f := range p.Syntax {
			s.file(p.Types, f)
		}
	}
	if funcs.incomplete && len(c.errs) == reported {
		// Never let an unusable package pass silently.
		c.errorf(noPos, "the node packages %s have errors", strings.Join(patterns, ", "))
	}
	for key, fs := range s.byKey {
		if len(fs) > 1 {
			for _, f := range fs {
				for _, other := range fs {
					if other != f {
						c.errorf(f.pos, "node key %q is claimed by both %s and %s (%s)", key, f.ir.Name, other.ir.Name, other.pos)
					}
				}
				f.bad = true
			}
		}
		funcs.byKey[key] = fs[0]
	}
	return funcs, nil
}

// packageErrors returns a package's errors; when it has parse or type errors, only
// those, since the go command's build errors repeat them without positions.
func packageErrors(p *packages.Package) []packages.Error {
	var typed []packages.Error
	for _, e := range p.Errors {
		if e.Kind == packages.ParseError || e.Kind == packages.TypeError {
			typed = append(typed, e)
		}
	}
	if len(typed) > 0 {
		return typed
	}
	return p.Errors
}

// funcScanner finds the annotated functions of a package's files.
type funcScanner struct {
	dir   string
	fset  *token.FileSet
	c     *collector
	byKey map[string][]*nodeFunc
	// broken is set while scanning a package that does not compile: its errors are
	// reported, and its functions are not checked further nor usable.
	broken bool
}

// rel makes a Go position relative to the working directory when it lies below it.
func (s *funcScanner) rel(p token.Position) token.Position {
	if filepath.IsAbs(p.Filename) {
		if r, err := filepath.Rel(s.dir, p.Filename); err == nil && !strings.HasPrefix(r, "..") {
			p.Filename = r
		}
	}
	return p
}

func (s *funcScanner) pos(p token.Pos) token.Position {
	return s.rel(s.fset.Position(p))
}

func (s *funcScanner) file(pkg *types.Package, f *ast.File) {
	for _, decl := range f.Decls {
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			s.funcDecl(pkg, decl)
		case *ast.GenDecl:
			for _, d := range directives(decl.Doc) {
				s.c.errorf(s.pos(d.Slash), "%s must annotate a function", directive)
			}
		}
	}
}

// directives returns the //flowgen:node lines of a doc comment.
func directives(doc *ast.CommentGroup) []*ast.Comment {
	if doc == nil {
		return nil
	}
	var ds []*ast.Comment
	for _, c := range doc.List {
		if rest, ok := strings.CutPrefix(c.Text, directive); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			ds = append(ds, c)
		}
	}
	return ds
}

func (s *funcScanner) funcDecl(pkg *types.Package, decl *ast.FuncDecl) {
	ds := directives(decl.Doc)
	if len(ds) == 0 {
		return
	}
	name := decl.Name.Name
	pos := s.pos(decl.Name.Pos())
	if len(ds) > 1 {
		s.c.errorf(s.pos(ds[1].Slash), "function %s has more than one %s directive", name, directive)
	}
	key, actions, ok := s.parseDirective(ds[0])
	if !ok {
		return
	}
	f := &nodeFunc{
		ir:  &Func{Key: key, PkgPath: pkg.Path(), Name: name, Pos: pos.String()},
		pos: pos,
	}
	s.byKey[key] = append(s.byKey[key], f)
	switch {
	case decl.Recv != nil:
		s.c.errorf(pos, "method %s has a %s directive; only functions can be nodes", name, directive)
		f.bad = true
		return
	case !ast.IsExported(name):
		s.c.errorf(pos, "function %s has a %s directive but is not exported", name, directive)
		f.bad = true
		return
	}
	fn, _ := pkg.Scope().Lookup(name).(*types.Func)
	if fn == nil || s.broken {
		f.bad = true
		return
	}
	if why := f.signature(fn.Signature()); why != "" {
		s.c.errorf(pos, "function %s has an unsupported signature: %s (accepted: %s)", name, why, acceptedShapes)
		f.bad = true
		return
	}
	if len(actions) > 0 && !f.routed {
		s.c.errorf(s.pos(ds[0].Slash), "function %s declares actions but does not return runtime.Routed[T]", name)
	}
	f.actions = actions
}

// parseDirective parses "//flowgen:node <key> [actions=a,b]".
func (s *funcScanner) parseDirective(c *ast.Comment) (key string, actions []string, ok bool) {
	pos := s.pos(c.Slash)
	words := strings.Fields(strings.TrimPrefix(c.Text, directive))
	if len(words) == 0 {
		s.c.errorf(pos, "%s needs a key: %s <key> [actions=a,b]", directive, directive)
		return "", nil, false
	}
	key = words[0]
	if builtinKinds[key] != "" {
		s.c.errorf(pos, "node key %q is the name of a built-in node type", key)
		return "", nil, false
	}
	ok = true
	for _, w := range words[1:] {
		list, found := strings.CutPrefix(w, "actions=")
		if !found {
			s.c.errorf(pos, "unknown option %q in %s directive (want actions=a,b)", w, directive)
			ok = false
			continue
		}
		for _, a := range strings.Split(list, ",") {
			if a == "" {
				s.c.errorf(pos, "empty action name in %q", w)
				ok = false
				continue
			}
			actions = append(actions, a)
		}
	}
	slices.Sort(actions)
	return key, slices.Compact(actions), ok
}

// acceptedShapes lists the node function signatures for messages.
const acceptedShapes = "func(context.Context, In) (Out, error), func(context.Context) (Out, error), " +
	"func(context.Context, In, P) (Out, error), func(context.Context, In) error"

// signature fills f from sig and returns why sig is not a node signature ("" when it is).
func (f *nodeFunc) signature(sig *types.Signature) string {
	params, results := sig.Params(), sig.Results()
	switch {
	case sig.TypeParams().Len() > 0:
		return "generic functions are not supported"
	case sig.Variadic():
		return "variadic functions are not supported"
	case params.Len() == 0 || params.Len() > 3:
		return fmt.Sprintf("it takes %d parameters", params.Len())
	case !isNamed(params.At(0).Type(), "context", "Context"):
		return fmt.Sprintf("its first parameter is %s, not context.Context", typeString(params.At(0).Type()))
	case results.Len() == 0 || results.Len() > 2:
		return fmt.Sprintf("it returns %d results", results.Len())
	case !types.Identical(results.At(results.Len()-1).Type(), errorType):
		return fmt.Sprintf("its last result is %s, not error", typeString(results.At(results.Len()-1).Type()))
	case results.Len() == 1 && params.Len() != 2:
		return "only func(context.Context, In) may return just an error"
	}
	f.ir.HasInput = params.Len() >= 2
	f.ir.HasParams = params.Len() == 3
	f.ir.HasOutput = results.Len() == 2
	if f.ir.HasInput {
		f.in = params.At(1).Type()
	}
	if f.ir.HasParams {
		f.params = params.At(2).Type()
	}
	if f.ir.HasOutput {
		f.out = results.At(0).Type()
		if n, ok := f.out.(*types.Named); ok && isNamed(n, runtimePath, "Routed") && n.TypeArgs().Len() == 1 {
			f.out, f.routed = n.TypeArgs().At(0), true
		}
	}
	return ""
}

// errorType is the predeclared error type.
var errorType = types.Universe.Lookup("error").Type()

// isNamed reports whether t is the named type (or an instance of the generic type)
// pkgPath.name.
func isNamed(t types.Type, pkgPath, name string) bool {
	n, ok := t.(*types.Named)
	if !ok {
		return false
	}
	obj := n.Origin().Obj()
	return obj.Pkg() != nil && obj.Pkg().Path() == pkgPath && obj.Name() == name
}

// parsePos parses the "file:line:col" (or "file:line", "file", "-") positions of
// go/packages errors.
func parsePos(s string) token.Position {
	if s == "" || s == "-" {
		return token.Position{}
	}
	var p token.Position
	rest := s
	for _, dst := range []*int{&p.Column, &p.Line} {
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			break
		}
		n, err := strconv.Atoi(rest[i+1:])
		if err != nil {
			break
		}
		*dst, rest = n, rest[:i]
	}
	if p.Line == 0 { // only one number: it was the line
		p.Line, p.Column = p.Column, 0
	}
	p.Filename = rest
	return p
}
