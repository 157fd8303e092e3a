package compiler

import (
	"encoding/json"
	"go/token"
	"strconv"

	"github.com/flowgen/flowgen/schema"
)

// Blueprint is a decoded blueprint file that remembers the position of every JSON value.
type Blueprint struct {
	*schema.Blueprint
	// File is the file name as given to DecodeBlueprint; positions carry it.
	File string

	root *jvalue
	data []byte
	tf   *token.File
}

// Pos returns the position of the JSON value at path, a sequence of object keys (string)
// and array indices (int) from the top of the file: Pos() is the blueprint object,
// Pos("nodes", 2) the third node, Pos("edges", 0, "target") the first edge's target and
// Pos("nodes", 1, "params", "duration") a params value. When the path goes beyond the
// file's values, the position of the deepest value that exists is returned.
func (b *Blueprint) Pos(path ...any) token.Position {
	v, _ := b.lookup(path)
	return b.offPos(v.off)
}

// KeyPos is like Pos, but when path ends with an object key that exists it returns the
// position of the key rather than of its value.
func (b *Blueprint) KeyPos(path ...any) token.Position {
	v, m := b.lookup(path)
	if m != nil {
		return b.offPos(m.keyOff)
	}
	return b.offPos(v.off)
}

// lookup walks path as far as it exists; m is set when the last step was an object key.
func (b *Blueprint) lookup(path []any) (v *jvalue, m *jmember) {
	v = b.root
	for _, p := range path {
		switch p := p.(type) {
		case string:
			mem := v.member(p)
			if mem == nil {
				return v, nil
			}
			v, m = mem.val, mem
		case int:
			if v.kind != jArray || p < 0 || p >= len(v.elems) {
				return v, nil
			}
			v, m = v.elems[p], nil
		default:
			return v, nil
		}
	}
	return v, m
}

// value returns the JSON value at path, or nil when it does not exist.
func (b *Blueprint) value(path ...any) *jvalue {
	v := b.root
	for _, p := range path {
		switch p := p.(type) {
		case string:
			v = v.get(p)
		case int:
			if v.kind != jArray || p < 0 || p >= len(v.elems) {
				return nil
			}
			v = v.elems[p]
		}
		if v == nil {
			return nil
		}
	}
	return v
}

func (b *Blueprint) offPos(off int) token.Position {
	return b.tf.Position(b.tf.Pos(off))
}

// strPos returns the position of byte off of the decoded string value v: exact when the
// string has no escapes before it, otherwise the position of the string itself.
func (b *Blueprint) strPos(v *jvalue, off int) token.Position {
	raw := b.rawText(v)
	if v.kind == jString && len(raw) >= 2 && off >= 0 && off <= len(v.str) && raw[1:len(raw)-1] == v.str {
		return b.offPos(v.off + 1 + off)
	}
	return b.offPos(v.off)
}

func (b *Blueprint) rawText(v *jvalue) string {
	return string(b.data[v.off:v.end])
}

// DecodeBlueprint parses one blueprint file. A syntax error returns a nil Blueprint and
// an ErrorList holding the position of the error. Values of the wrong JSON type, unknown
// fields, duplicate keys and missing required fields are reported in the ErrorList too,
// but the Blueprint is returned alongside with the valid parts filled in, so that callers
// can report further mistakes; nodes and edges keep their file index (an invalid entry is
// left zero).
func DecodeBlueprint(filename string, data []byte) (*Blueprint, error) {
	fset := token.NewFileSet()
	tf := fset.AddFile(filename, -1, len(data))
	tf.SetLinesForContent(data)
	root, dups, serr := parseJSON(data)
	if serr != nil {
		return nil, ErrorList{{Pos: tf.Position(tf.Pos(serr.off)), Msg: serr.msg}}
	}
	d := &decoder{bp: &Blueprint{Blueprint: &schema.Blueprint{}, File: filename, root: root, data: data, tf: tf}}
	for _, m := range dups {
		d.c.errorf(d.bp.offPos(m.keyOff), "duplicate key %q", m.key)
	}
	d.blueprint(root)
	if err := d.c.err(); err != nil {
		return d.bp, err
	}
	return d.bp, nil
}

// decoder fills a schema.Blueprint from the positioned JSON tree.
type decoder struct {
	bp *Blueprint
	c  collector
}

// fields calls set for every member of the object v; what names the object in messages.
// Members that set does not know are reported as unknown fields.
func (d *decoder) fields(v *jvalue, what string, set func(m *jmember) bool) bool {
	if !d.is(v, jObject, what) {
		return false
	}
	for i := range v.members {
		if m := &v.members[i]; !set(m) {
			d.c.errorf(d.bp.offPos(m.keyOff), "unknown field %q in %s", m.key, what)
		}
	}
	return true
}

// is reports whether v has kind k, reporting a mistake if not.
func (d *decoder) is(v *jvalue, k jkind, what string) bool {
	if v.kind != k {
		d.c.errorf(d.bp.offPos(v.off), "%s must be a JSON %s, not %s", what, k, v.kind)
		return false
	}
	return true
}

func (d *decoder) str(v *jvalue, what string, dst *string) {
	if d.is(v, jString, what) {
		*dst = v.str
	}
}

// name is like str for values that name something and so must not be empty.
func (d *decoder) name(v *jvalue, what string, dst *string) {
	d.str(v, what, dst)
	if v.kind == jString && v.str == "" {
		d.c.errorf(d.bp.offPos(v.off), "%s must not be empty", what)
	}
}

func (d *decoder) int(v *jvalue, what string, dst **int) {
	if !d.is(v, jNumber, what) {
		return
	}
	n, err := strconv.Atoi(v.str)
	if err != nil {
		d.c.errorf(d.bp.offPos(v.off), "%s must be an integer, not %s", what, v.str)
		return
	}
	*dst = &n
}

// require reports the required fields of the object v that are missing.
func (d *decoder) require(v *jvalue, what string, names ...string) {
	for _, n := range names {
		if v.member(n) == nil {
			d.c.errorf(d.bp.offPos(v.off), "%s is missing %q", what, n)
		}
	}
}

func (d *decoder) blueprint(v *jvalue) {
	b := d.bp.Blueprint
	ok := d.fields(v, "blueprint", func(m *jmember) bool {
		switch m.key {
		case "$schema":
			d.str(m.val, "$schema", &b.Schema)
		case "id":
			d.name(m.val, "id", &b.ID)
		case "nodes":
			if d.is(m.val, jArray, "nodes") {
				b.Nodes = make([]schema.Node, len(m.val.elems))
				for i, e := range m.val.elems {
					d.node(e, &b.Nodes[i])
				}
			}
		case "edges":
			if d.is(m.val, jArray, "edges") {
				b.Edges = make([]schema.Edge, len(m.val.elems))
				for i, e := range m.val.elems {
					d.edge(e, &b.Edges[i])
				}
			}
		case "metadata":
			if d.is(m.val, jObject, "metadata") {
				b.Metadata = m.val.toAny().(map[string]any)
			}
		default:
			return false
		}
		return true
	})
	if ok {
		d.require(v, "blueprint", "id", "nodes")
	}
}

func (d *decoder) node(v *jvalue, n *schema.Node) {
	ok := d.fields(v, "node", func(m *jmember) bool {
		switch m.key {
		case "id":
			d.name(m.val, "node id", &n.ID)
		case "uses":
			d.name(m.val, "uses", &n.Uses)
		case "params":
			if d.is(m.val, jObject, "params") {
				n.Params = m.val.toAny().(map[string]any)
			}
		case "inputs":
			if m.val.kind != jString && m.val.kind != jObject {
				d.c.errorf(d.bp.offPos(m.val.off), "inputs must be a JSON string or object, not %s", m.val.kind)
				break
			}
			n.Inputs = json.RawMessage(d.bp.rawText(m.val))
		case "config":
			n.Config = &schema.NodeConfig{}
			d.config(m.val, n.Config)
		default:
			return false
		}
		return true
	})
	if ok {
		d.require(v, "node", "id", "uses")
	}
}

func (d *decoder) config(v *jvalue, c *schema.NodeConfig) {
	d.fields(v, "config", func(m *jmember) bool {
		switch m.key {
		case "maxRetries":
			d.int(m.val, "maxRetries", &c.MaxRetries)
		case "retryDelay":
			d.int(m.val, "retryDelay", &c.RetryDelay)
		case "timeout":
			d.int(m.val, "timeout", &c.Timeout)
		case "fallback":
			d.str(m.val, "fallback", &c.Fallback)
		case "joinStrategy":
			d.str(m.val, "joinStrategy", &c.JoinStrategy)
		default:
			return false
		}
		return true
	})
}

func (d *decoder) edge(v *jvalue, e *schema.Edge) {
	ok := d.fields(v, "edge", func(m *jmember) bool {
		switch m.key {
		case "source":
			d.name(m.val, "source", &e.Source)
		case "target":
			d.name(m.val, "target", &e.Target)
		case "action":
			d.str(m.val, "action", &e.Action)
		case "condition":
			d.str(m.val, "condition", &e.Condition)
		case "transform":
			d.str(m.val, "transform", &e.Transform)
		default:
			return false
		}
		return true
	})
	if ok {
		d.require(v, "edge", "source", "target")
	}
}
