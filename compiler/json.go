package compiler

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// jkind is the kind of a JSON value.
type jkind uint8

const (
	jNull jkind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

func (k jkind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// jvalue is a JSON value that remembers where it is in its file.
type jvalue struct {
	kind    jkind
	off     int       // byte offset of the value's first byte
	end     int       // byte offset just past the value
	str     string    // jString: the decoded string; jNumber: the literal text
	b       bool      // jBool
	elems   []*jvalue // jArray
	members []jmember // jObject, in file order
}

// jmember is one key/value pair of a JSON object.
type jmember struct {
	key    string
	keyOff int
	val    *jvalue
}

// member returns the member named key, or nil.
func (v *jvalue) member(key string) *jmember {
	if v == nil || v.kind != jObject {
		return nil
	}
	for i := range v.members {
		if v.members[i].key == key {
			return &v.members[i]
		}
	}
	return nil
}

// get returns the value of the member named key, or nil.
func (v *jvalue) get(key string) *jvalue {
	if m := v.member(key); m != nil {
		return m.val
	}
	return nil
}

// toAny converts v the way encoding/json decodes into an interface value.
func (v *jvalue) toAny() any {
	switch v.kind {
	case jBool:
		return v.b
	case jNumber:
		f, _ := strconv.ParseFloat(v.str, 64)
		return f
	case jString:
		return v.str
	case jArray:
		a := make([]any, len(v.elems))
		for i, e := range v.elems {
			a[i] = e.toAny()
		}
		return a
	case jObject:
		m := make(map[string]any, len(v.members))
		for _, mem := range v.members {
			m[mem.key] = mem.val.toAny()
		}
		return m
	}
	return nil
}

// jsonSyntaxError is a fatal parse error at a byte offset.
type jsonSyntaxError struct {
	off int
	msg string
}

// maxDepth bounds nesting so that hostile input cannot exhaust the stack.
const maxDepth = 1000

// jparser is a recursive-descent JSON parser that records offsets.
type jparser struct {
	data  []byte
	pos   int
	depth int
	dups  []jmember // keys that repeat an earlier key of the same object
}

// parseJSON parses one JSON document. Duplicate object keys are returned separately: they
// are mistakes, but not syntax errors.
func parseJSON(data []byte) (v *jvalue, dups []jmember, serr *jsonSyntaxError) {
	p := &jparser{data: data}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(*jsonSyntaxError)
			if !ok {
				panic(r)
			}
			v, dups, serr = nil, nil, e
		}
	}()
	v = p.value()
	p.space()
	if p.pos < len(p.data) {
		p.fail(p.pos, "invalid character %s after top-level value", p.quoteChar())
	}
	return v, p.dups, nil
}

func (p *jparser) fail(off int, format string, args ...any) {
	panic(&jsonSyntaxError{off: off, msg: fmt.Sprintf(format, args...)})
}

// quoteChar describes the byte at p.pos for an error message.
func (p *jparser) quoteChar() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	r, _ := utf8.DecodeRune(p.data[p.pos:])
	return strconv.QuoteRune(r)
}

func (p *jparser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *jparser) value() *jvalue {
	p.space()
	if p.pos >= len(p.data) {
		p.fail(p.pos, "unexpected end of JSON input")
	}
	start := p.pos
	var v *jvalue
	switch c := p.data[p.pos]; {
	case c == '{':
		v = p.object()
	case c == '[':
		v = p.array()
	case c == '"':
		v = &jvalue{kind: jString, str: p.string()}
	case c == '-' || c >= '0' && c <= '9':
		v = &jvalue{kind: jNumber, str: p.number()}
	case c == 't':
		p.word("true")
		v = &jvalue{kind: jBool, b: true}
	case c == 'f':
		p.word("false")
		v = &jvalue{kind: jBool}
	case c == 'n':
		p.word("null")
		v = &jvalue{kind: jNull}
	default:
		p.fail(p.pos, "invalid character %s looking for beginning of value", p.quoteChar())
	}
	v.off, v.end = start, p.pos
	return v
}

func (p *jparser) word(w string) {
	for i := 0; i < len(w); i++ {
		if p.pos >= len(p.data) || p.data[p.pos] != w[i] {
			p.fail(p.pos, "invalid character %s in literal %s (expecting %q)", p.quoteChar(), w, w[i])
		}
		p.pos++
	}
}

func (p *jparser) enter() {
	p.depth++
	if p.depth > maxDepth {
		p.fail(p.pos, "exceeded max depth %d", maxDepth)
	}
}

func (p *jparser) object() *jvalue {
	p.enter()
	defer func() { p.depth-- }()
	v := &jvalue{kind: jObject}
	p.pos++ // {
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return v
	}
	seen := make(map[string]bool)
	for {
		p.space()
		if p.pos >= len(p.data) {
			p.fail(p.pos, "unexpected end of JSON input")
		}
		if p.data[p.pos] != '"' {
			p.fail(p.pos, "invalid character %s looking for beginning of object key string", p.quoteChar())
		}
		m := jmember{keyOff: p.pos}
		m.key = p.string()
		p.space()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			p.fail(p.pos, "invalid character %s after object key", p.quoteChar())
		}
		p.pos++
		m.val = p.value()
		if seen[m.key] {
			p.dups = append(p.dups, m)
		}
		seen[m.key] = true
		v.members = append(v.members, m)
		p.space()
		if p.pos >= len(p.data) {
			p.fail(p.pos, "unexpected end of JSON input")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return v
		default:
			p.fail(p.pos, "invalid character %s after object key:value pair", p.quoteChar())
		}
	}
}

func (p *jparser) array() *jvalue {
	p.enter()
	defer func() { p.depth-- }()
	v := &jvalue{kind: jArray}
	p.pos++ // [
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return v
	}
	for {
		v.elems = append(v.elems, p.value())
		p.space()
		if p.pos >= len(p.data) {
			p.fail(p.pos, "unexpected end of JSON input")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return v
		default:
			p.fail(p.pos, "invalid character %s after array element", p.quoteChar())
		}
	}
}

// string decodes the string literal at p.pos.
func (p *jparser) string() string {
	p.pos++ // opening quote
	start := p.pos
	var buf []byte // nil while the string has no escapes
	for {
		if p.pos >= len(p.data) {
			p.fail(p.pos, "unexpected end of JSON input")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			s := p.data[start:p.pos]
			p.pos++
			if buf == nil {
				return string(s)
			}
			return string(buf)
		case c < 0x20:
			p.fail(p.pos, "invalid character %s in string literal", p.quoteChar())
		case c == '\\':
			if buf == nil {
				buf = append([]byte(nil), p.data[start:p.pos]...)
			}
			buf = p.escape(buf)
		default:
			if buf != nil {
				buf = append(buf, c)
			}
			p.pos++
		}
	}
}

// escape decodes the escape sequence at p.pos onto buf.
func (p *jparser) escape(buf []byte) []byte {
	p.pos++ // backslash
	if p.pos >= len(p.data) {
		p.fail(p.pos, "unexpected end of JSON input")
	}
	c := p.data[p.pos]
	p.pos++
	switch c {
	case '"', '\\', '/':
		return append(buf, c)
	case 'b':
		return append(buf, '\b')
	case 'f':
		return append(buf, '\f')
	case 'n':
		return append(buf, '\n')
	case 'r':
		return append(buf, '\r')
	case 't':
		return append(buf, '\t')
	case 'u':
		r := p.hex4()
		if utf16.IsSurrogate(r) && p.pos+1 < len(p.data) && p.data[p.pos] == '\\' && p.data[p.pos+1] == 'u' {
			save := p.pos
			p.pos += 2
			if r2 := utf16.DecodeRune(r, p.hex4()); r2 != utf8.RuneError {
				return utf8.AppendRune(buf, r2)
			}
			p.pos = save
		}
		return utf8.AppendRune(buf, r)
	}
	p.pos--
	p.fail(p.pos, "invalid character %s in string escape code", p.quoteChar())
	return nil
}

func (p *jparser) hex4() rune {
	if p.pos+4 > len(p.data) {
		p.pos = len(p.data)
		p.fail(p.pos, "unexpected end of JSON input")
	}
	n, err := strconv.ParseUint(string(p.data[p.pos:p.pos+4]), 16, 32)
	if err != nil {
		p.fail(p.pos, "invalid character in \\u hexadecimal character escape")
	}
	p.pos += 4
	return rune(n)
}

// number scans a JSON number and returns its text.
func (p *jparser) number() string {
	start := p.pos
	if p.data[p.pos] == '-' {
		p.pos++
	}
	switch {
	case p.pos < len(p.data) && p.data[p.pos] == '0':
		p.pos++
	case p.pos < len(p.data) && p.data[p.pos] >= '1' && p.data[p.pos] <= '9':
		p.digits()
	default:
		p.fail(p.pos, "invalid character %s in numeric literal", p.quoteChar())
	}
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		p.needDigits("after decimal point in numeric literal")
	}
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			p.pos++
		}
		p.needDigits("in exponent of numeric literal")
	}
	return string(p.data[start:p.pos])
}

func (p *jparser) needDigits(where string) {
	if p.pos >= len(p.data) || p.data[p.pos] < '0' || p.data[p.pos] > '9' {
		p.fail(p.pos, "invalid character %s %s", p.quoteChar(), where)
	}
	p.digits()
}

func (p *jparser) digits() {
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
		p.pos++
	}
}
