package compiler

import (
	"go/token"
	"go/types"
	"strings"
	"unicode"
	"unicode/utf8"
)

// goName turns a blueprint id into an exported Go name: the id is split on '-', '_', '.'
// and spaces and each part is capitalised (order-fulfillment → OrderFulfillment). ok is
// false when the result is not an exported Go identifier.
func goName(id string) (name string, ok bool) {
	parts := strings.FieldsFunc(id, func(r rune) bool {
		return r == '-' || r == '_' || r == '.' || unicode.IsSpace(r)
	})
	var b strings.Builder
	for _, p := range parts {
		r, size := utf8.DecodeRuneInString(p)
		b.WriteRune(unicode.ToUpper(r))
		b.WriteString(p[size:])
	}
	name = b.String()
	return name, token.IsIdentifier(name) && token.IsExported(name)
}

// typeString prints t for messages, qualifying named types by package name
// (nodes.Order); nil prints as "nothing".
func typeString(t types.Type) string {
	if t == nil {
		return "nothing"
	}
	return types.TypeString(t, func(p *types.Package) string { return p.Name() })
}

// irType converts t to its IR form (full import paths); nil and unknown give nil.
func irType(t types.Type) *Type {
	if t == nil || t == unknown {
		return nil
	}
	return &Type{String: types.TypeString(t, nil), T: t}
}

// unknown marks a type that could not be determined because of an earlier mistake;
// checks involving it are skipped so that one mistake is reported once.
var unknown types.Type = types.Typ[types.Invalid]

// quoteJoin prints ids quoted and separated by sep: "a", "b", "c".
func quoteJoin(ids []string, sep string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = `"` + id + `"`
	}
	return strings.Join(q, sep)
}
