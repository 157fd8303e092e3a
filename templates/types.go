package templates

import (
	"go/types"
	"strconv"
	"strings"

	"github.com/dave/jennifer/jen"

	"github.com/flowgen/flowgen/compiler"
)

// typeCode renders a Go type, qualifying named types by their import path.
func typeCode(t types.Type) jen.Code {
	switch t := t.(type) {
	case *types.Alias:
		return typeCode(types.Unalias(t))
	case *types.Named:
		obj := t.Obj()
		var s *jen.Statement
		if obj.Pkg() == nil {
			s = jen.Id(obj.Name())
		} else {
			s = jen.Qual(obj.Pkg().Path(), obj.Name())
		}
		if args := t.TypeArgs(); args != nil && args.Len() > 0 {
			codes := make([]jen.Code, args.Len())
			for i := range args.Len() {
				codes[i] = typeCode(args.At(i))
			}
			s = s.Types(codes...)
		}
		return s
	case *types.Basic:
		return jen.Id(t.Name())
	case *types.Pointer:
		return jen.Op("*").Add(typeCode(t.Elem()))
	case *types.Slice:
		return jen.Index().Add(typeCode(t.Elem()))
	case *types.Array:
		return jen.Index(jen.Lit(int(t.Len()))).Add(typeCode(t.Elem()))
	case *types.Map:
		return jen.Map(typeCode(t.Key())).Add(typeCode(t.Elem()))
	case *types.Struct:
		fields := make([]jen.Code, t.NumFields())
		for i := range t.NumFields() {
			f := t.Field(i)
			var s *jen.Statement
			if f.Embedded() {
				s = jen.Add(typeCode(f.Type()))
			} else {
				s = jen.Id(f.Name()).Add(typeCode(f.Type()))
			}
			if tag := t.Tag(i); tag != "" {
				s = s.Id(strconv.Quote(tag))
			}
			fields[i] = s
		}
		return jen.Struct(fields...)
	case *types.Interface:
		if t.Empty() {
			return jen.Any()
		}
	}
	// Types flowgen cannot spell (channels, functions, non-empty interfaces) are
	// rejected by the compiler; render them as a visible placeholder.
	return jen.Id("/* unsupported type " + t.String() + " */")
}

// irType renders an IR type; nil is the empty struct (no input).
func irType(t *compiler.Type) jen.Code {
	if t == nil {
		return jen.Struct()
	}
	return typeCode(t.T)
}

// literal renders a params literal.
func literal(l *compiler.Literal) jen.Code {
	switch {
	case l.Nil:
		return jen.Nil()
	case l.Ptr != nil:
		if isComposite(l.Ptr) {
			return jen.Op("&").Add(literal(l.Ptr))
		}
		return jen.Qual(runtimePkg, "Ptr").Call(jen.Add(typeCode(l.Ptr.Type.T)).Call(literal(l.Ptr)))
	case l.Basic != "":
		// A JSON number in an interface-typed slot is a float64, as encoding/json
		// decodes it: spell integral values as floats so they do not become ints.
		if b, ok := l.Type.T.(*types.Basic); ok && b.Kind() == types.Float64 && !strings.ContainsAny(l.Basic, ".eE") {
			return jen.Id(l.Basic + ".0")
		}
		return jen.Id(l.Basic)
	case l.Fields != nil:
		d := jen.Dict{}
		for _, f := range l.Fields {
			d[jen.Id(f.Name)] = literal(f.Value)
		}
		return jen.Add(typeCode(l.Type.T)).Values(d)
	case l.Keys != nil:
		d := jen.Dict{}
		for i, k := range l.Keys {
			d[literal(k)] = literal(l.Elems[i])
		}
		return jen.Add(typeCode(l.Type.T)).Values(d)
	default:
		elems := make([]jen.Code, len(l.Elems))
		for i, e := range l.Elems {
			elems[i] = literal(e)
		}
		return jen.Add(typeCode(l.Type.T)).Values(elems...)
	}
}

func isComposite(l *compiler.Literal) bool {
	return l.Fields != nil || l.Keys != nil || l.Elems != nil ||
		(l.Basic == "" && !l.Nil && l.Ptr == nil)
}
