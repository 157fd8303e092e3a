// Package workermain is the body of a generated worker binary: it parses the flags,
// sets up logging, opens the backend, registers the workflows, runs the worker (and the
// reconciler) and stops gracefully on SIGINT or SIGTERM, finishing the nodes in flight.
package workermain

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"

	_ "github.com/flowgen/flowgen/backends/all" // every backend, for -backend
	"github.com/flowgen/flowgen/runtime"
)

// Main runs the worker named name with the command-line args (without the program
// name) and returns the process exit status.
func Main(name string, args []string, register func(*runtime.Worker)) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, name, args, os.Stdout, os.Stderr, register)
}

func run(ctx context.Context, name string, args []string, stdout, stderr io.Writer, register func(*runtime.Worker)) int {
	once := len(args) > 0 && args[0] == "reconcile"
	if once {
		args = args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("FLOWGEN_BACKEND")
	if def == "" {
		def = runtime.DefaultBackend
	}
	backendURL := fs.String("backend", def, "backend URL, e.g. mem://, sqlite://flow.db, redis://localhost:6379/0 (env FLOWGEN_BACKEND)")
	concurrency := fs.Int("concurrency", 8, "nodes executed at once")
	lease := fs.Duration("lease", 30*time.Second, "how long a job stays leased without a heartbeat; a job of a worker that died is delivered again after it")
	reconcileEvery := fs.Duration("reconcile-every", 0, "run the reconciler this often (0: never)")
	stalledAfter := fs.Duration("stalled-after", 5*time.Minute, "a running run without progress for this long is stalled")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n       %s reconcile [flags]\n\nExecutes workflow nodes from the backend's queue until SIGINT or SIGTERM,\nthen finishes the nodes in flight and exits. With reconcile, runs one\nreconciler pass (runs stalled for -stalled-after get their open nodes\nenqueued again), prints its stats as JSON on stdout and exits.\n\nFlags:\n", name, name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "%s: -log-level: %v\n", name, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	c, err := runtime.Open(ctx, *backendURL)
	if err != nil {
		log.Error("open backend", "err", err)
		return 1
	}
	defer c.Close()
	w := runtime.NewWorker(c, runtime.WithConcurrency(*concurrency), runtime.WithLease(*lease), runtime.WithLogger(log))
	register(w)
	if once {
		stats, err := w.Reconcile(ctx, *stalledAfter)
		if err != nil {
			log.Error("reconcile", "err", err)
			return 1
		}
		scanned := "scanned"
		if n, ok := c.Backend().(backend.ScanNamer); ok {
			scanned = n.ScannedName()
		}
		data, _ := json.Marshal(map[string]int{scanned: stats.Scanned, "stalledRuns": stats.Stalled,
			"reconciledRuns": stats.Reconciled, "failedRuns": stats.Failed})
		fmt.Fprintf(stdout, "%s\n", data)
		return 0
	}
	if *reconcileEvery > 0 {
		go reconcileLoop(ctx, w, *reconcileEvery, *stalledAfter, log)
	}
	log.Info("worker started", "backend", *backendURL, "concurrency", *concurrency)
	if err := w.Run(ctx); err != nil {
		log.Error("worker stopped", "err", err)
		return 1
	}
	log.Info("worker stopped")
	return 0
}

func reconcileLoop(ctx context.Context, w *runtime.Worker, every, stalledAfter time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stats, err := w.Reconcile(ctx, stalledAfter)
		if err != nil {
			log.Error("reconcile", "err", err)
			continue
		}
		if stats.Stalled > 0 {
			log.Info("reconciled", "scanned", stats.Scanned, "stalled", stats.Stalled, "reconciled", stats.Reconciled, "failed", stats.Failed)
		}
	}
}
