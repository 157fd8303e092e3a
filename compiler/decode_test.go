package compiler

import (
	"errors"
	"fmt"
	"go/token"
	"strings"
	"testing"
)

const positionsBlueprint = `{
  "id": "p",
  "nodes": [
    {"id": "a", "uses": "step", "params": {"duration": "5m", "n": [1, {"k": true}]}},
    {
      "id": "b",
      "uses": "sleep",
      "config": {"maxRetries": 2, "fallback": "a"},
      "inputs": {"x": "a"}
    }
  ],
  "edges": [
    {"source": "a", "target": "b", "condition": "out.X > 1", "transform": "\"\u00e9\" + out.Y"}
  ],
  "metadata": {"version": "3"}
}
`

func TestDecodeBlueprintPositions(t *testing.T) {
	bp, err := DecodeBlueprint("p.json", []byte(positionsBlueprint))
	if err != nil {
		t.Fatal(err)
	}
	at := func(line, col int) string { return fmt.Sprintf("p.json:%d:%d", line, col) }
	for _, tc := range []struct {
		name string
		got  token.Position
		want string
	}{
		{"root", bp.Pos(), at(1, 1)},
		{"id", bp.Pos("id"), at(2, 9)},
		{"nodes", bp.Pos("nodes"), at(3, 12)},
		{"nodes[0]", bp.Pos("nodes", 0), at(4, 5)},
		{"nodes[0].uses", bp.Pos("nodes", 0, "uses"), at(4, 25)},
		{"nodes[0].params key", bp.KeyPos("nodes", 0, "params"), at(4, 33)},
		{"params.duration", bp.Pos("nodes", 0, "params", "duration"), at(4, 56)},
		{"params.n[1].k", bp.Pos("nodes", 0, "params", "n", 1, "k"), at(4, 77)},
		{"nodes[1]", bp.Pos("nodes", 1), at(5, 5)},
		{"nodes[1].id", bp.Pos("nodes", 1, "id"), at(6, 13)},
		{"config.fallback", bp.Pos("nodes", 1, "config", "fallback"), at(8, 47)},
		{"inputs.x key", bp.KeyPos("nodes", 1, "inputs", "x"), at(9, 18)},
		{"edges[0].target", bp.Pos("edges", 0, "target"), at(13, 31)},
		{"metadata.version", bp.Pos("metadata", "version"), at(15, 27)},
		// Paths beyond the file stop at the deepest value that exists.
		{"missing field", bp.Pos("nodes", 1, "params"), at(5, 5)},
		{"index out of range", bp.Pos("edges", 3, "target"), at(12, 12)},
		{"KeyPos of an index", bp.KeyPos("nodes", 1), at(5, 5)},
	} {
		if got := tc.got.String(); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}

	cond := bp.value("edges", 0, "condition")
	if got, want := bp.strPos(cond, 4).String(), at(13, 54); got != want {
		t.Errorf("offset in a plain string: got %s, want %s", got, want)
	}
	// A string with escapes maps every offset to the string itself.
	tr := bp.value("edges", 0, "transform")
	if got, want := bp.strPos(tr, 5).String(), at(13, 75); got != want {
		t.Errorf("offset in an escaped string: got %s, want %s", got, want)
	}
}

func TestDecodeBlueprintFields(t *testing.T) {
	bp, err := DecodeBlueprint("p.json", []byte(positionsBlueprint))
	if err != nil {
		t.Fatal(err)
	}
	if bp.ID != "p" || len(bp.Nodes) != 2 || len(bp.Edges) != 1 || bp.File != "p.json" {
		t.Fatalf("decoded %+v", bp.Blueprint)
	}
	a, b, e := bp.Nodes[0], bp.Nodes[1], bp.Edges[0]
	if a.Params["duration"] != "5m" || a.Params["n"].([]any)[0] != 1.0 {
		t.Errorf("params: %#v", a.Params)
	}
	if string(b.Inputs) != `{"x": "a"}` {
		t.Errorf("inputs: %s", b.Inputs)
	}
	if b.Config == nil || *b.Config.MaxRetries != 2 || b.Config.Fallback != "a" {
		t.Errorf("config: %+v", b.Config)
	}
	if e.Source != "a" || e.Target != "b" || e.Condition != "out.X > 1" || e.Transform != `"é" + out.Y` {
		t.Errorf("edge: %+v", e)
	}
	if bp.Metadata["version"] != "3" {
		t.Errorf("metadata: %v", bp.Metadata)
	}
}

func TestDecodeBlueprintErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // the error lines, positions in x.json
	}{
		{`{"id": "x", "nodes": [}`, `1:23: invalid character '}' looking for beginning of value`},
		{"{\n  \"id\": \"x\",\n  \"nodes\": []", `3:14: unexpected end of JSON input`},
		{`{"id": "x" "nodes": []}`, `1:12: invalid character '"' after object key:value pair`},
		{`{"id": "x", "nodes": [tru]}`, `1:26: invalid character ']' in literal true (expecting 'e')`},
		{`{"id": "\q"}`, `1:10: invalid character 'q' in string escape code`},
		{`{"id": 01}`, `1:9: invalid character '1' after object key:value pair`},
		{`{"id": -}`, `1:9: invalid character '}' in numeric literal`},
		{`{"id": "x"} {}`, `1:13: invalid character '{' after top-level value`},
		{`[]`, `1:1: blueprint must be a JSON object, not array`},
		{`{"id": "x", "nodes": [], "id": "y"}`, `1:26: duplicate key "id"`},
		{`{"nodes": [{"id": "a", "uses": "b", "config": {"maxRetries": 1.5, "joinStrategy": 3}}]}`,
			"1:1: blueprint is missing \"id\"\n" +
				"1:62: maxRetries must be an integer, not 1.5\n" +
				"1:83: joinStrategy must be a JSON string, not number"},
		{`{"id": "x", "nodes": [{"id": "a", "uses": "b", "inputs": 3}], "edges": [{"source": "a", "target": "", "when": 1}]}`,
			"1:58: inputs must be a JSON string or object, not number\n" +
				"1:99: target must not be empty\n" +
				"1:103: unknown field \"when\" in edge"},
	} {
		_, err := DecodeBlueprint("x.json", []byte(tc.in))
		var list ErrorList
		if !errors.As(err, &list) {
			t.Errorf("%s: got %v, want an ErrorList", tc.in, err)
			continue
		}
		want := "x.json:" + strings.ReplaceAll(tc.want, "\n", "\nx.json:")
		if got := list.Error(); got != want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.in, got, want)
		}
	}
}

func TestDecodeBlueprintKeepsValidParts(t *testing.T) {
	bp, err := DecodeBlueprint("x.json", []byte(`{"id": "x", "nodes": [{"id": "a", "uses": "b", "colour": 1}, 7, {"id": "c", "uses": "d"}]}`))
	if err == nil || bp == nil {
		t.Fatalf("got %v, %v; want a blueprint and an error", bp, err)
	}
	if len(bp.Nodes) != 3 || bp.Nodes[0].ID != "a" || bp.Nodes[1].ID != "" || bp.Nodes[2].ID != "c" {
		t.Errorf("nodes: %+v", bp.Nodes)
	}
}

func TestJSONStrings(t *testing.T) {
	v, _, serr := parseJSON([]byte(`["a\"b\\c\/\b\f\n\r\t", "\u00e9\ud83d\ude00", "plain é"]`))
	if serr != nil {
		t.Fatal(serr.msg)
	}
	for i, want := range []string{"a\"b\\c/\b\f\n\r\t", "é😀", "plain é"} {
		if got := v.elems[i].str; got != want {
			t.Errorf("string %d: got %q, want %q", i, got, want)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	l := ErrorList{
		{Pos: token.Position{Filename: "a.json", Line: 2, Column: 3}, Msg: "bad"},
		{Pos: token.Position{Filename: "b.json"}, Msg: "unreadable"},
		{Msg: "no position"},
	}
	want := "a.json:2:3: bad\nb.json: unreadable\nno position"
	if got := l.Error(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
