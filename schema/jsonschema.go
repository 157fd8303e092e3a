package schema

import (
	"bytes"
	_ "embed"
	"encoding/json"

	"github.com/invopop/jsonschema"
)

// ID is the $id of the blueprint JSON Schema.
const ID = "https://github.com/flowgen/flowgen/schema/blueprint.schema.json"

// File is the checked-in JSON Schema, kept equal to Generate's output by a test.
//
//go:embed blueprint.schema.json
var File []byte

// Generate builds the JSON Schema of the blueprint format from the Go types; srcDir is
// this package's source directory, whose doc comments become the descriptions.
func Generate(srcDir string) ([]byte, error) {
	r := &jsonschema.Reflector{}
	if err := r.AddGoComments("github.com/flowgen/flowgen/schema", srcDir); err != nil {
		return nil, err
	}
	s := r.Reflect(&Blueprint{})
	s.ID = ID
	s.Title = "flowgen blueprint"
	s.Description = "A workflow blueprint (the Flowcraft blueprint format) compiled by flowgen."
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Write(data)
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}
