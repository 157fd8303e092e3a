package workermain

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/flowgen/flowgen/backends/mem"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

func TestReconcileOnce(t *testing.T) {
	var stdout, stderr bytes.Buffer
	registered := 0
	code := run(context.Background(), "test-worker", []string{"reconcile", "-backend", "mem://", "-stalled-after", "1s"},
		&stdout, &stderr, func(*runtime.Worker) { registered++ })
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var stats map[string]int
	if err := json.Unmarshal(stdout.Bytes(), &stats); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	for _, k := range []string{"scanned", "stalledRuns", "reconciledRuns", "failedRuns"} {
		if v, ok := stats[k]; !ok || v != 0 {
			t.Errorf("stats[%q] = %d, %v; want 0 on an empty backend", k, v, ok)
		}
	}
	if registered != 1 {
		t.Errorf("register called %d times", registered)
	}
}

// namedMem is the mem backend naming its scanned count, as the redis and aws
// backends do.
type namedMem struct{ *mem.Backend }

func (namedMem) ScannedName() string { return "scannedThings" }

func init() {
	backend.Register("named-mem", func(context.Context, *url.URL) (backend.Backend, error) { return namedMem{mem.New()}, nil })
}

func TestReconcileStatsNameTheScannedCount(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), "w", []string{"reconcile", "-backend", "named-mem://"}, &stdout, &stderr, func(*runtime.Worker) {})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var stats map[string]int
	if err := json.Unmarshal(stdout.Bytes(), &stats); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if _, ok := stats["scannedThings"]; !ok || len(stats) != 4 {
		t.Errorf("stats %v: want scannedThings, stalledRuns, reconciledRuns, failedRuns", stats)
	}
}

func TestBadFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), "w", []string{"-log-level", "loud"}, &stdout, &stderr, func(*runtime.Worker) {}); code != 2 {
		t.Errorf("bad -log-level: exit %d, want 2", code)
	}
	if code := run(context.Background(), "w", []string{"-backend", "nope://"}, &stdout, &stderr, func(*runtime.Worker) {}); code != 1 ||
		!strings.Contains(stderr.String(), "unknown scheme") {
		t.Errorf("unknown backend: exit %d, stderr %q", code, stderr.String())
	}
}
