package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/flowgen/flowgen/schema"
)

// schemaCmd prints the blueprint JSON Schema.
func schemaCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgen schema", flag.ContinueOnError)
	fs.SetOutput(stderr)
	generate := fs.String("generate", "", "regenerate the schema from the Go types in this source `dir` (flowgen's schema/ directory) instead of printing the built-in one")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: flowgen schema [-generate DIR]\n\nPrints the JSON Schema of the blueprint format. Point a blueprint's \"$schema\" at it\nfor editor completion.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	data := schema.File
	if *generate != "" {
		var err error
		if data, err = schema.Generate(*generate); err != nil {
			return err
		}
	}
	_, err := stdout.Write(data)
	return err
}
