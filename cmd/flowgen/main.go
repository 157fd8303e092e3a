// Command flowgen compiles JSON workflow blueprints and annotated Go node functions
// into statically typed workflow packages and worker binaries.
//
// Usage:
//
//	flowgen [gen] -nodes ./nodes -out ./orderflow [-pkg name] [-worker dir] blueprints/*.json
//	flowgen check -nodes ./nodes -out ./orderflow [-json] blueprints/*.json
//	flowgen graph [-format mermaid|dot] blueprint.json
//	flowgen schema
//	flowgen bench [-backend URL] [-shapes ...] [-runs N] [-inflight N] [-workers N] [-json]
//	flowgen infra aws|azure [-format cli|terraform|both]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/flowgen/flowgen/compiler"
)

const usage = `flowgen compiles workflow blueprints and //flowgen:node Go functions into typed
workflow packages.

Usage:
  flowgen [gen] -nodes PATTERNS -out DIR [-pkg NAME] [-worker DIR] BLUEPRINT.json...
        generate the workflow package and its worker's main (the default command)
  flowgen check -nodes PATTERNS -out DIR [-json] BLUEPRINT.json...
        check the blueprints against the node functions; write nothing
  flowgen graph [-format mermaid|dot] BLUEPRINT.json
        print the blueprint's graph
  flowgen schema
        print the JSON Schema of the blueprint format
  flowgen bench [-backend URL] [-shapes LIST] [-runs N] [-inflight N] [-workers N] [-json]
        run the benchmark shapes and print throughput and latency
  flowgen infra aws|azure [-format cli|terraform|both]
        print the CLI commands and Terraform that create the aws:// or azure:// backend's resources

Run "flowgen COMMAND -h" for a command's flags. Errors go to stderr with
file:line:col positions; the exit status is 1 on any error.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one flowgen command and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "gen"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		switch args[0] {
		case "gen", "check", "graph", "schema", "bench", "infra":
			cmd, args = args[0], args[1:]
		case "help":
			fmt.Fprint(stdout, usage)
			return 0
		}
	} else if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, usage)
		return 0
	}
	var err error
	switch cmd {
	case "gen":
		err = genCmd(ctx, args, stdout, stderr, true)
	case "check":
		err = genCmd(ctx, args, stdout, stderr, false)
	case "graph":
		err = graphCmd(args, stdout, stderr)
	case "schema":
		err = schemaCmd(args, stdout, stderr)
	case "bench":
		err = benchCmd(ctx, args, stdout, stderr)
	case "infra":
		err = infraCmd(args, stdout, stderr)
	}
	switch {
	case err == nil:
		return 0
	case err == errHelpShown:
		return 0
	case err == errUsage:
		return 2
	case err == errReported:
		return 1
	default:
		fmt.Fprintf(stderr, "flowgen: %v\n", err)
		return 1
	}
}

var (
	// errHelpShown reports that -h printed a command's usage.
	errHelpShown = errors.New("help shown")
	// errUsage reports bad flags or arguments; the usage was printed.
	errUsage = errors.New("usage")
	// errReported reports errors already printed to stderr.
	errReported = errors.New("reported")
)

// parse parses a command's flags.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelpShown
		}
		return errUsage
	}
	return nil
}

// report prints a compiler.ErrorList one positioned error per line; other errors are
// returned for main to print.
func report(stderr io.Writer, err error) error {
	var list compiler.ErrorList
	if !errors.As(err, &list) {
		return err
	}
	for _, e := range list {
		fmt.Fprintln(stderr, e)
	}
	return errReported
}
