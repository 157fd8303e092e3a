// Package moderationflow is the workflow package flowgen generates from the blueprints and node
// functions of examples/moderation. Everything but this file is generated.
package moderationflow

//go:generate go run -tags flowgen_nobench github.com/flowgen/flowgen/cmd/flowgen gen -nodes ../../moderation/nodes -out . -worker ../cmd/moderationflow-worker ../../moderation/blueprints/content-moderation.json
