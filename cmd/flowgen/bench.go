//go:build !flowgen_nobench

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"sync"
	"text/tabwriter"

	_ "github.com/flowgen/flowgen/backends/all" // every backend, for -backend
	"github.com/flowgen/flowgen/examples/bench"
)

// benchCmd runs the benchmark shapes and prints their figures.
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgen bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backendURL := fs.String("backend", "mem://", "backend URL")
	shapes := fs.String("shapes", "chain10,fanout8,diamond,wide64", "comma-separated shapes to run")
	runs := fs.Int("runs", 2000, "runs per measurement")
	inflight := fs.String("inflight", "1,64", "comma-separated numbers of runs kept in flight; each is one measurement")
	workers := fs.Int("workers", 1, "worker processes (1: a worker inside this process, whose node executions are counted too)")
	serve := fs.Bool("serve", false, "run as one benchmark worker process until interrupted (what -workers starts)")
	concurrency := fs.Int("concurrency", 4*goruntime.GOMAXPROCS(0), "nodes a worker runs at once")
	asJSON := fs.Bool("json", false, "print one JSON object per measurement instead of the table")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: flowgen bench [flags]\n\nRuns the benchmark shapes (chain10, fanout8, diamond, wide64), checks every\nresult and that every node ran exactly once, and prints runs/s, node executions/s\nand p50/p99 run latency.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if *serve {
		return bench.Serve(ctx, *backendURL, *concurrency)
	}
	cfg := bench.Config{Backend: *backendURL, Runs: *runs, Concurrency: *concurrency}
	for _, s := range strings.Split(*shapes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Shapes = append(cfg.Shapes, s)
		}
	}
	for _, s := range strings.Split(*inflight, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			return fmt.Errorf("-inflight: %q is not a positive number", s)
		}
		cfg.InFlight = append(cfg.InFlight, n)
	}
	if *runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	switch u, err := url.Parse(*backendURL); {
	case err != nil:
		return fmt.Errorf("-backend: %w", err)
	case *workers < 1:
		return errors.New("-workers must be at least 1")
	case *workers > 1 && u.Scheme == "mem":
		return errors.New("-workers: mem:// lives inside one process, so it has exactly 1 worker; use a shared backend for worker processes")
	case *workers > 1:
		cfg.Workers = *workers
	}
	// bench.Run cancels the workers' context when it returns; wait until they are
	// gone, so that none outlives this command.
	var procs sync.WaitGroup
	start := func(ctx context.Context, n int) error {
		return startBenchWorkers(ctx, n, *backendURL, *concurrency, stderr, &procs)
	}
	results, err := bench.Run(ctx, cfg, start, stderr)
	procs.Wait()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "shape\tbackend\tworkers\tinflight\truns\truns/s\tnode execs/s\tp50 ms\tp99 ms\tper node\t\n")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.0f\t%.0f\t%.2f\t%.2f\t%s\t\n",
			r.Shape, r.Backend, r.Workers, r.InFlight, r.Runs, r.RunsPerS, r.NodeExecsPerS, r.P50ms, r.P99ms, strings.TrimSpace(r.CountersText()))
	}
	return tw.Flush()
}

// startBenchWorkers starts n `flowgen bench -serve` processes on backendURL; they are
// killed when ctx is done, and procs is done when they have exited.
func startBenchWorkers(ctx context.Context, n int, backendURL string, concurrency int, stderr io.Writer, procs *sync.WaitGroup) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for range n {
		cmd := exec.CommandContext(ctx, self, "bench", "-serve", "-backend", backendURL, "-concurrency", fmt.Sprint(concurrency))
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start a bench worker: %w", err)
		}
		procs.Go(func() { _ = cmd.Wait() })
	}
	return nil
}
