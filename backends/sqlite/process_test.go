package sqlite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// The environment variables that turn this test binary into a worker process of
// TestProcesses.
const (
	childFileEnv = "FLOWGEN_SQLITE_TEST_FILE"
	childModeEnv = "FLOWGEN_SQLITE_TEST_MODE"
)

// TestProcesses runs worker processes (this test binary, re-executed) on one file: one
// leases jobs and dies without acknowledging them, three others work the queue. Every
// job is completed exactly once, and the dead process's jobs come back when their
// leases expire, counted as second deliveries.
func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	path := filepath.Join(t.TempDir(), "flow.db")
	b := reopen(t, path)
	ctx := context.Background()
	createRun(t, b, "r")
	const jobs = 300
	batch := make([]backend.Job, jobs)
	for i := range batch {
		batch[i] = backend.Job{ID: strconv.Itoa(i), Run: "r"}
	}
	if err := b.Enqueue(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	run := func(mode string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWorkerProcess$", "-test.v")
		cmd.Env = append(os.Environ(), childFileEnv+"="+path, childModeEnv+"="+mode)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	if err := run("crash").Wait(); err != nil {
		t.Fatalf("crashing worker: %v", err)
	}
	var cmds []*exec.Cmd
	for range 3 {
		cmds = append(cmds, run("work"))
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	_, vals, err := b.Read(ctx, "r", "count", "redelivered", "duplicates")
	if err != nil {
		t.Fatal(err)
	}
	if string(vals["count"]) != strconv.Itoa(jobs) || vals["duplicates"] != nil {
		t.Errorf("count %q, duplicates %q; want %d and none", vals["count"], vals["duplicates"], jobs)
	}
	if string(vals["redelivered"]) != "5" {
		t.Errorf("%q jobs delivered twice, want the 5 the crashed worker held", vals["redelivered"])
	}
	if n, _ := b.Pending(ctx); n != 0 {
		t.Errorf("%d jobs left", n)
	}
}

// TestWorkerProcess is a worker process of TestProcesses; it does nothing otherwise.
func TestWorkerProcess(t *testing.T) {
	path := os.Getenv(childFileEnv)
	if path == "" {
		t.Skip("run by TestProcesses")
	}
	ctx := context.Background()
	b, err := New(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv(childModeEnv) == "crash" {
		ds, err := b.Dequeue(ctx, 5, 300*time.Millisecond, time.Second)
		if err != nil || len(ds) != 5 {
			t.Fatalf("Dequeue = %d jobs, %v", len(ds), err)
		}
		os.Exit(0) // without acknowledging, nor closing
	}
	defer b.Close()
	idle := time.Now()
	for time.Since(idle) < time.Second {
		ds, err := b.Dequeue(ctx, 4, 10*time.Second, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 0 {
			idle = time.Now()
		}
		for _, d := range ds {
			err := b.Update(ctx, "r", func(tx backend.Tx) error {
				if fresh, err := tx.PutIfAbsent("done/"+d.Job.ID, []byte(strconv.Itoa(os.Getpid()))); err != nil {
					return err
				} else if !fresh {
					_, err := tx.Incr("duplicates", 1)
					return err
				}
				if d.Deliveries > 1 {
					if _, err := tx.Incr("redelivered", 1); err != nil {
						return err
					}
				}
				_, err := tx.Incr("count", 1)
				return err
			})
			if err != nil {
				t.Fatal(fmt.Errorf("job %s: %w", d.Job.ID, err))
			}
			if err := b.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}
