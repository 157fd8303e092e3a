package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/flowgen/flowgen/compiler"
	"github.com/flowgen/flowgen/schema"
)

// graphCmd prints a blueprint's graph as Mermaid or DOT.
func graphCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgen graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", "mermaid", "output format: mermaid or dot")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: flowgen graph [-format mermaid|dot] BLUEPRINT.json\n\nPrints the blueprint's nodes and edges; edges show their action and condition,\nfallbacks are dashed.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (*format != "mermaid" && *format != "dot") {
		fs.Usage()
		return errUsage
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	bp, err := compiler.DecodeBlueprint(fs.Arg(0), data)
	if err != nil {
		return report(stderr, err)
	}
	if *format == "dot" {
		_, err = io.WriteString(stdout, dot(bp.Blueprint))
	} else {
		_, err = io.WriteString(stdout, mermaid(bp.Blueprint))
	}
	return err
}

// edgeLabel is an edge's action and condition, for display.
func edgeLabel(e schema.Edge) string {
	var parts []string
	if e.Action != "" {
		parts = append(parts, e.Action)
	}
	if e.Condition != "" {
		parts = append(parts, "if "+e.Condition)
	}
	return strings.Join(parts, " ")
}

func mermaid(bp *schema.Blueprint) string {
	var b strings.Builder
	b.WriteString("flowchart TD\n")
	ids := map[string]string{}
	for i, n := range bp.Nodes {
		ids[n.ID] = "n" + strconv.Itoa(i)
		label := mermaidText(n.ID + "\n" + n.Uses)
		if n.Config != nil && n.Config.JoinStrategy == schema.JoinAny {
			fmt.Fprintf(&b, "  %s{{\"%s\"}}\n", ids[n.ID], label)
		} else {
			fmt.Fprintf(&b, "  %s[\"%s\"]\n", ids[n.ID], label)
		}
	}
	for _, e := range bp.Edges {
		if l := edgeLabel(e); l != "" {
			fmt.Fprintf(&b, "  %s -->|\"%s\"| %s\n", ids[e.Source], mermaidText(l), ids[e.Target])
		} else {
			fmt.Fprintf(&b, "  %s --> %s\n", ids[e.Source], ids[e.Target])
		}
	}
	for _, n := range bp.Nodes {
		if n.Config != nil && n.Config.Fallback != "" {
			fmt.Fprintf(&b, "  %s -.->|fallback| %s\n", ids[n.ID], ids[n.Config.Fallback])
		}
	}
	return b.String()
}

// mermaidText escapes text for a quoted Mermaid label.
func mermaidText(s string) string {
	return strings.NewReplacer(`"`, "#quot;", "\n", "<br/>").Replace(s)
}

func dot(bp *schema.Blueprint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "digraph %s {\n  node [shape=box];\n", strconv.Quote(bp.ID))
	for _, n := range bp.Nodes {
		shape := ""
		if n.Config != nil && n.Config.JoinStrategy == schema.JoinAny {
			shape = ", shape=hexagon"
		}
		fmt.Fprintf(&b, "  %s [label=%s%s];\n", strconv.Quote(n.ID), strconv.Quote(n.ID+"\n"+n.Uses), shape)
	}
	for _, e := range bp.Edges {
		attrs := ""
		if l := edgeLabel(e); l != "" {
			attrs = " [label=" + strconv.Quote(l) + "]"
		}
		fmt.Fprintf(&b, "  %s -> %s%s;\n", strconv.Quote(e.Source), strconv.Quote(e.Target), attrs)
	}
	for _, n := range bp.Nodes {
		if n.Config != nil && n.Config.Fallback != "" {
			fmt.Fprintf(&b, "  %s -> %s [style=dashed, label=\"fallback\"];\n", strconv.Quote(n.ID), strconv.Quote(n.Config.Fallback))
		}
	}
	b.WriteString("}\n")
	return b.String()
}
