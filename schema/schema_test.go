package schema_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/flowgen/flowgen/schema"
)

// TestSchemaIsCurrent proves the checked-in schema is what the Go types generate.
func TestSchemaIsCurrent(t *testing.T) {
	got, err := schema.Generate(".")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, schema.File) {
		t.Fatal("schema/blueprint.schema.json is stale: run scripts/dev.sh generate")
	}
}

func compile(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema.File))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(schema.ID, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(schema.ID)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestExamplesValidate validates every example blueprint, and every blueprint of the
// compiler's successful test cases, against the schema.
func TestExamplesValidate(t *testing.T) {
	s := compile(t)
	var files []string
	for _, pattern := range []string{"../examples/*/blueprints/*.json", "../compiler/testdata/ok_*/blueprints/*.json"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d blueprints", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := s.Validate(v); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestSchemaRejects shows the schema catches the mistakes an editor should flag.
func TestSchemaRejects(t *testing.T) {
	s := compile(t)
	for name, doc := range map[string]string{
		"missing id":           `{"nodes": [], "edges": []}`,
		"unknown field":        `{"id": "x", "nodes": [], "edges": [], "extra": 1}`,
		"node without uses":    `{"id": "x", "nodes": [{"id": "a"}], "edges": []}`,
		"bad join strategy":    `{"id": "x", "nodes": [{"id": "a", "uses": "f", "config": {"joinStrategy": "some"}}], "edges": []}`,
		"zero attempts":        `{"id": "x", "nodes": [{"id": "a", "uses": "f", "config": {"maxRetries": 0}}], "edges": []}`,
		"edge without target":  `{"id": "x", "nodes": [], "edges": [{"source": "a"}]}`,
		"inputs of wrong type": `{"id": "x", "nodes": [{"id": "a", "uses": "f", "inputs": 3}], "edges": []}`,
	} {
		var v any
		if err := json.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatal(err)
		}
		if err := s.Validate(v); err == nil {
			t.Errorf("%s: the schema accepts %s", name, strings.TrimSpace(doc))
		}
	}
}
