package compiler

import (
	"cmp"
	"fmt"
	"go/token"
	"slices"
	"strings"
)

// Error is one mistake in a blueprint or a node package, with its position.
type Error struct {
	Pos token.Position // blueprint or Go file position; may be unset
	Msg string
}

// Error prints the mistake as "file:line:col: message".
func (e *Error) Error() string {
	if e.Pos.Filename == "" && !e.Pos.IsValid() {
		return e.Msg
	}
	return e.Pos.String() + ": " + e.Msg
}

// ErrorList is every mistake found by Load or DecodeBlueprint, sorted by file, line and
// column.
type ErrorList []*Error

// Error prints one mistake per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// collector gathers mistakes; analysis never stops at the first one.
type collector struct {
	errs ErrorList
}

func (c *collector) errorf(pos token.Position, format string, args ...any) {
	c.errs = append(c.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

// add appends the mistakes of another list.
func (c *collector) add(l ErrorList) {
	c.errs = append(c.errs, l...)
}

// err returns the mistakes sorted and without duplicates, or nil when there are none.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	l := slices.Clone(c.errs)
	slices.SortStableFunc(l, func(a, b *Error) int {
		return cmp.Or(
			cmp.Compare(a.Pos.Filename, b.Pos.Filename),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Column, b.Pos.Column),
			cmp.Compare(a.Msg, b.Msg),
		)
	})
	l = slices.CompactFunc(l, func(a, b *Error) bool {
		return a.Pos == b.Pos && a.Msg == b.Msg
	})
	return l
}
