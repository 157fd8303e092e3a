package examples_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The example workflows themselves run end to end on every backend in
// backends/backendtest (examples.go); this file tests what only the examples have: the
// generated worker binary.

// TestWorkerBinary builds the generated order worker, checks its help, and stops it
// with SIGTERM: it must exit 0 after a graceful stop.
func TestWorkerBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "orderflow-worker")
	if out, err := exec.Command("go", "build", "-o", bin, "./generated/cmd/orderflow-worker").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	help, _ := exec.Command(bin, "-h").CombinedOutput()
	for _, flag := range []string{"-backend", "-concurrency", "-reconcile-every", "-stalled-after", "-log-level", "FLOWGEN_BACKEND"} {
		if !bytes.Contains(help, []byte(flag)) {
			t.Errorf("help does not mention %s:\n%s", flag, help)
		}
	}
	cmd := exec.Command(bin, "-backend", "mem://", "-log-level", "debug")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "worker started") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker exit: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "worker stopped") {
		t.Errorf("no graceful stop in the log:\n%s", stderr.String())
	}
	_ = os.Remove(bin)
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
