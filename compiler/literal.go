package compiler

// Params are decoded at generate time, following encoding/json: struct fields match JSON
// keys by their json tag name or Go name (exactly, else case-insensitively), embedded
// structs' fields are promoted, null leaves a value zero (nil for pointers, slices, maps
// and interfaces). A value under an interface type (any) gets the dynamic type
// encoding/json would give it (float64, string, bool, []any, map[string]any), so the
// literal's Type is then that type, not the interface. Types that decode themselves
// (json.Unmarshaler, encoding.TextUnmarshaler), complex numbers, channels, functions,
// []byte and maps whose key is not a string type are not supported.

import (
	"fmt"
	"go/token"
	"go/types"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// litConv converts a params JSON value into a Literal, reporting mistakes at the
// position of the offending JSON value.
type litConv struct {
	bp     *Blueprint
	c      *collector
	prefix string // starts every message, e.g. `node "fetch": `
}

func (c *litConv) errorf(pos token.Position, path, format string, args ...any) {
	c.c.errorf(pos, "%s%s: %s", c.prefix, path, fmt.Sprintf(format, args...))
}

// convert returns the literal of type t for v; path names v in messages
// ("params.limits[2]").
func (c *litConv) convert(v *jvalue, t types.Type, path string) *Literal {
	pos := c.bp.offPos(v.off)
	if m := unmarshaler(t); m != "" {
		c.errorf(pos, path, "%s has a %s method, which cannot run at generate time", typeString(t), m)
		return zeroLiteral(t)
	}
	lit := &Literal{Type: irType(t)}
	if v.kind == jNull {
		return zeroLiteral(t)
	}
	switch u := t.Underlying().(type) {
	case *types.Basic:
		c.basic(v, t, u, lit, path)
	case *types.Pointer:
		lit.Ptr = c.convert(v, u.Elem(), path)
	case *types.Struct:
		if c.want(v, jObject, t, path) {
			c.object(v, t, u, path, lit)
		}
	case *types.Slice:
		if b, ok := u.Elem().Underlying().(*types.Basic); ok && b.Kind() == types.Byte {
			c.errorf(pos, path, "%s is not supported in params", typeString(t))
		} else if c.want(v, jArray, t, path) {
			lit.Elems = c.elems(v, u.Elem(), path)
		}
	case *types.Array:
		if c.want(v, jArray, t, path) {
			if int64(len(v.elems)) > u.Len() {
				c.errorf(pos, path, "%d elements do not fit in %s", len(v.elems), typeString(t))
			}
			lit.Elems = c.elems(v, u.Elem(), path)
		}
	case *types.Map:
		if k, ok := u.Key().Underlying().(*types.Basic); !ok || k.Info()&types.IsString == 0 {
			c.errorf(pos, path, "%s is not supported in params: map keys must be strings", typeString(t))
		} else if c.want(v, jObject, t, path) {
			c.mapElems(v, u, path, lit)
		}
	case *types.Interface:
		if !u.Empty() {
			c.errorf(pos, path, "%s is not supported in params: only the empty interface is", typeString(t))
			break
		}
		return c.convert(v, dynamicType(v), path)
	default:
		c.errorf(pos, path, "%s is not supported in params", typeString(t))
	}
	return lit
}

// want reports whether v has kind k, reporting a mistake if not.
func (c *litConv) want(v *jvalue, k jkind, t types.Type, path string) bool {
	if v.kind != k {
		c.errorf(c.bp.offPos(v.off), path, "cannot use %s as %s", describe(v), typeString(t))
		return false
	}
	return true
}

// describe prints a JSON value for messages.
func describe(v *jvalue) string {
	switch v.kind {
	case jString:
		s := v.str
		if len(s) > 40 {
			s = s[:37] + "..."
		}
		return "string " + strconv.Quote(s)
	case jNumber:
		return "number " + v.str
	case jBool:
		return "JSON " + strconv.FormatBool(v.b)
	}
	return "JSON " + v.kind.String()
}

// intBits are the sizes of the integer kinds; int, uint and uintptr are taken as 64-bit.
var intBits = map[types.BasicKind]int{
	types.Int: 64, types.Int8: 8, types.Int16: 16, types.Int32: 32, types.Int64: 64,
	types.Uint: 64, types.Uint8: 8, types.Uint16: 16, types.Uint32: 32, types.Uint64: 64, types.Uintptr: 64,
}

func (c *litConv) basic(v *jvalue, t types.Type, b *types.Basic, lit *Literal, path string) {
	pos := c.bp.offPos(v.off)
	info := b.Info()
	switch {
	case info&types.IsBoolean != 0:
		if c.want(v, jBool, t, path) {
			lit.Basic = strconv.FormatBool(v.b)
		}
	case info&types.IsString != 0:
		if c.want(v, jString, t, path) {
			lit.Basic = strconv.Quote(v.str)
		}
	case info&types.IsInteger != 0:
		if !c.want(v, jNumber, t, path) {
			return
		}
		var err error
		if info&types.IsUnsigned != 0 {
			var n uint64
			n, err = strconv.ParseUint(v.str, 10, intBits[b.Kind()])
			lit.Basic = strconv.FormatUint(n, 10)
		} else {
			var n int64
			n, err = strconv.ParseInt(v.str, 10, intBits[b.Kind()])
			lit.Basic = strconv.FormatInt(n, 10)
		}
		switch {
		case err == nil:
		case strings.ContainsAny(v.str, ".eE"):
			c.errorf(pos, path, "cannot use number %s as %s: not an integer", v.str, typeString(t))
		default:
			c.errorf(pos, path, "number %s overflows %s", v.str, typeString(t))
		}
	case info&types.IsFloat != 0:
		if !c.want(v, jNumber, t, path) {
			return
		}
		bits := 64
		if b.Kind() == types.Float32 {
			bits = 32
		}
		if _, err := strconv.ParseFloat(v.str, bits); err != nil {
			c.errorf(pos, path, "number %s overflows %s", v.str, typeString(t))
		}
		lit.Basic = v.str
	default:
		c.errorf(pos, path, "%s is not supported in params", typeString(t))
	}
}

func (c *litConv) elems(v *jvalue, elem types.Type, path string) []*Literal {
	out := make([]*Literal, len(v.elems))
	for i, e := range v.elems {
		out[i] = c.convert(e, elem, fmt.Sprintf("%s[%d]", path, i))
	}
	return out
}

// mapElems fills a map literal, its keys sorted.
func (c *litConv) mapElems(v *jvalue, m *types.Map, path string, lit *Literal) {
	members := slices.Clone(v.members)
	slices.SortStableFunc(members, func(x, y jmember) int { return strings.Compare(x.key, y.key) })
	for _, mem := range members {
		lit.Keys = append(lit.Keys, &Literal{Type: irType(m.Key()), Basic: strconv.Quote(mem.key)})
		lit.Elems = append(lit.Elems, c.convert(mem.val, m.Elem(), fmt.Sprintf("%s[%q]", path, mem.key)))
	}
}

// object fills a struct literal from a JSON object.
func (c *litConv) object(v *jvalue, t types.Type, st *types.Struct, path string, lit *Literal) {
	fields := jsonFields(st)
	root := &partial{lit: lit, st: st}
	setBy := make(map[*jsonField]string)
	for _, m := range v.members {
		f := lookupField(fields, m.key)
		if f == nil {
			c.errorf(c.bp.offPos(m.keyOff), path, "unknown field %q in %s", m.key, typeString(t))
			continue
		}
		if prev, ok := setBy[f]; ok {
			if prev != m.key { // an exact repeat is reported as a duplicate key
				c.errorf(c.bp.offPos(m.keyOff), path, "%q sets field %s, already set by %q", m.key, f.goName, prev)
			}
			continue
		}
		setBy[f] = m.key
		root.set(f.path, c.convert(m.val, f.typ, path+"."+m.key))
	}
	root.finish()
}

// partial is a struct literal being filled, field by field; embedded structs that
// receive promoted fields are partials themselves.
type partial struct {
	lit  *Literal
	st   *types.Struct
	vals map[int]*Literal
	kids map[int]*partial
}

func (p *partial) set(path []int, val *Literal) {
	if len(path) == 1 {
		if p.vals == nil {
			p.vals = make(map[int]*Literal)
		}
		p.vals[path[0]] = val
		return
	}
	kid := p.kids[path[0]]
	if kid == nil {
		ft := p.st.Field(path[0]).Type()
		kid = &partial{lit: &Literal{Type: irType(ft)}, st: ft.Underlying().(*types.Struct)}
		if p.kids == nil {
			p.kids = make(map[int]*partial)
		}
		p.kids[path[0]] = kid
	}
	kid.set(path[1:], val)
}

// finish writes the fields into the literal in declaration order.
func (p *partial) finish() {
	for i := range p.st.NumFields() {
		if v := p.vals[i]; v != nil {
			p.lit.Fields = append(p.lit.Fields, LiteralField{Name: p.st.Field(i).Name(), Value: v})
		} else if k := p.kids[i]; k != nil {
			k.finish()
			p.lit.Fields = append(p.lit.Fields, LiteralField{Name: p.st.Field(i).Name(), Value: k.lit})
		}
	}
}

// jsonField is a struct field as encoding/json sees it.
type jsonField struct {
	name   string // JSON name
	goName string // Go field name
	path   []int  // field indices from the outer struct through embedded structs
	typ    types.Type
	tagged bool // named by a json tag
}

// jsonFields lists the fields encoding/json would decode into a struct: exported fields
// by their json tag name or Go name, with the fields of exported, untagged, embedded
// structs promoted; of several fields with one name, the shallowest wins, a tagged one
// breaking ties, and a remaining tie drops the name.
func jsonFields(st *types.Struct) []*jsonField {
	var all []*jsonField
	var walk func(st *types.Struct, path []int)
	walk = func(st *types.Struct, path []int) {
		for i := range st.NumFields() {
			f := st.Field(i)
			tag := reflect.StructTag(st.Tag(i)).Get("json")
			if tag == "-" || !f.Exported() {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			p := append(slices.Clone(path), i)
			if inner, ok := f.Type().Underlying().(*types.Struct); ok && f.Embedded() && name == "" {
				if _, isPtr := f.Type().(*types.Pointer); !isPtr {
					walk(inner, p)
					continue
				}
			}
			jf := &jsonField{name: name, goName: f.Name(), path: p, typ: f.Type(), tagged: name != ""}
			if name == "" {
				jf.name = f.Name()
			}
			all = append(all, jf)
		}
	}
	walk(st, nil)
	var out []*jsonField
	for _, f := range all {
		best, tie := f, false
		for _, o := range all {
			if o == f || o.name != f.name {
				continue
			}
			switch {
			case len(o.path) < len(best.path) || len(o.path) == len(best.path) && o.tagged && !best.tagged:
				best, tie = o, false
			case len(o.path) == len(best.path) && o.tagged == best.tagged:
				tie = true
			}
		}
		if best == f && !tie {
			out = append(out, f)
		}
	}
	return out
}

// lookupField finds the field for a JSON key: an exact match, else a case-insensitive
// one, as encoding/json does.
func lookupField(fields []*jsonField, key string) *jsonField {
	for _, f := range fields {
		if f.name == key {
			return f
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return f
		}
	}
	return nil
}

// dynamicType is the type encoding/json gives a JSON value decoded into an interface.
func dynamicType(v *jvalue) types.Type {
	anyType := types.Universe.Lookup("any").Type()
	switch v.kind {
	case jBool:
		return types.Typ[types.Bool]
	case jNumber:
		return types.Typ[types.Float64]
	case jString:
		return types.Typ[types.String]
	case jArray:
		return types.NewSlice(anyType)
	}
	return types.NewMap(types.Typ[types.String], anyType)
}

// unmarshaler returns the name of the decoding method t has ("" when none).
func unmarshaler(t types.Type) string {
	if _, ok := t.Underlying().(*types.Interface); ok {
		return ""
	}
	for _, ms := range []*types.MethodSet{types.NewMethodSet(t), types.NewMethodSet(types.NewPointer(t))} {
		for _, name := range []string{"UnmarshalJSON", "UnmarshalText"} {
			if ms.Lookup(nil, name) != nil {
				return name
			}
		}
	}
	return ""
}

// zeroLiteral is the zero value of t: nil for pointers, slices, maps and interfaces,
// an empty composite literal (no field set) for structs and arrays.
func zeroLiteral(t types.Type) *Literal {
	lit := &Literal{Type: irType(t)}
	switch u := t.Underlying().(type) {
	case *types.Basic:
		switch {
		case u.Info()&types.IsBoolean != 0:
			lit.Basic = "false"
		case u.Info()&types.IsString != 0:
			lit.Basic = `""`
		default:
			lit.Basic = "0"
		}
	case *types.Pointer, *types.Slice, *types.Map, *types.Interface, *types.Signature, *types.Chan:
		lit.Nil = true
	}
	return lit
}
