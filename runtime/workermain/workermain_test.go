package workermain

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/flowgen/flowgen/runtime"
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
