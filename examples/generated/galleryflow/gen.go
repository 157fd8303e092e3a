// Package galleryflow is the workflow package flowgen generates from the blueprints and node
// functions of examples/gallery. Everything but this file is generated.
package galleryflow

//go:generate go run -tags flowgen_nobench github.com/flowgen/flowgen/cmd/flowgen gen -nodes ../../gallery/nodes -out . -worker ../cmd/galleryflow-worker ../../gallery/blueprints/gallery.json
