package schema

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"

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
	docs, err := docComments(srcDir)
	if err != nil {
		return nil, err
	}
	r := &jsonschema.Reflector{LookupComment: func(t reflect.Type, field string) string {
		if field != "" {
			return docs[t.Name()+"."+field]
		}
		return docs[t.Name()]
	}}
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

// docComments returns the doc comments of the exported types ("Node") and their fields
// ("Node.Uses") declared in the Go files of dir.
func docComments(dir string) (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	docs := map[string]string{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				doc := ts.Doc
				if doc == nil {
					doc = gd.Doc
				}
				docs[ts.Name.Name] = strings.TrimSpace(doc.Text())
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, fld := range st.Fields.List {
					for _, n := range fld.Names {
						docs[ts.Name.Name+"."+n.Name] = strings.TrimSpace(fld.Doc.Text())
					}
				}
			}
		}
	}
	return docs, nil
}
