package compiler

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"go/types"
)

// exprScope is what a blueprint expression (an edge condition or transform, a loop
// condition) can see. Its parent is types.Universe, so an expression sees exactly:
//
//   - out: the source node's output (not declared when the source has no output);
//   - input: the run input (struct{} when the run takes none);
//   - iteration: the 0-based iteration count (int), in loop conditions only;
//   - Go's predeclared identifiers (len, true, nil, int, ...).
//
// No package is imported: exported fields and methods of out and input are reachable,
// but a qualified name such as strings.HasPrefix is not.
type exprScope struct {
	out       types.Type
	input     types.Type
	iteration bool
}

// exprError is a mistake in an expression at a byte offset of its source.
type exprError struct {
	off int
	msg string
}

// checkExpr parses and type-checks src in scope and returns its type.
func checkExpr(src string, scope exprScope) (types.Type, *exprError) {
	fset := token.NewFileSet()
	expr, err := parser.ParseExprFrom(fset, "", src, parser.SkipObjectResolution)
	if err != nil {
		var list scanner.ErrorList
		if errors.As(err, &list) && len(list) > 0 {
			return nil, &exprError{off: list[0].Pos.Offset, msg: list[0].Msg}
		}
		return nil, &exprError{msg: err.Error()}
	}
	pkg := types.NewPackage("flowgen/expr", "expr")
	if scope.out != nil {
		pkg.Scope().Insert(types.NewVar(token.NoPos, pkg, "out", scope.out))
	}
	input := scope.input
	if input == nil {
		input = types.NewStruct(nil, nil)
	}
	pkg.Scope().Insert(types.NewVar(token.NoPos, pkg, "input", input))
	if scope.iteration {
		pkg.Scope().Insert(types.NewVar(token.NoPos, pkg, "iteration", types.Typ[types.Int]))
	}
	info := &types.Info{Types: make(map[ast.Expr]types.TypeAndValue)}
	if err := types.CheckExpr(fset, pkg, token.NoPos, expr, info); err != nil {
		var te types.Error
		if errors.As(err, &te) {
			return nil, &exprError{off: fset.Position(te.Pos).Offset, msg: te.Msg}
		}
		return nil, &exprError{msg: err.Error()}
	}
	tv := info.Types[expr]
	if !tv.IsValue() {
		return nil, &exprError{off: 0, msg: fmt.Sprintf("%s is not a value", src)}
	}
	return tv.Type, nil
}

// isBool reports whether t is a boolean type (bool, untyped bool or a type defined as
// bool).
func isBool(t types.Type) bool {
	b, ok := t.Underlying().(*types.Basic)
	return ok && b.Info()&types.IsBoolean != 0
}
