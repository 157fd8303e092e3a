package backendtest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// This file holds what the end-to-end cases share: clients and workers on a fresh
// backend, running workflows and checking what ran.

// fastWorker is the worker configuration of the cases: short polls and leases.
func (s *suite) fastWorker() []runtime.WorkerOption {
	return []runtime.WorkerOption{
		runtime.WithConcurrency(8),
		runtime.WithPollInterval(20 * time.Millisecond),
		runtime.WithLease(max(2*time.Second, 4*s.cfg.MinLease)),
	}
}

// client returns a client on a fresh backend.
func (s *suite) client(t *testing.T) *runtime.Client {
	t.Helper()
	b, _ := s.open(t)
	return runtime.New(b)
}

// setup returns a client on a fresh backend with a worker for wfs.
func (s *suite) setup(t *testing.T, wfs ...*runtime.Workflow) *runtime.Client {
	t.Helper()
	c := s.client(t)
	s.startWorker(t, c, wfs)
	return c
}

// startWorker runs a worker for wfs on c until the test ends or stop is called; stop
// returns once the worker finished its nodes in flight. opts come after the suite's.
func (s *suite) startWorker(t *testing.T, c *runtime.Client, wfs []*runtime.Workflow, opts ...runtime.WorkerOption) (stop func()) {
	t.Helper()
	return runWorker(t, s.newWorker(t, c, wfs, opts...))
}

// newWorker returns a worker for wfs on c, configured as startWorker does.
func (s *suite) newWorker(t *testing.T, c *runtime.Client, wfs []*runtime.Workflow, opts ...runtime.WorkerOption) *runtime.Worker {
	opts = append(append([]runtime.WorkerOption{runtime.WithLogger(testLogger(t))}, s.fastWorker()...), opts...)
	w := runtime.NewWorker(c, opts...)
	w.Register(wfs...)
	return w
}

// reopen returns a second connection to b through its URL when the backend is durable
// (closed when the test ends), as a restarted worker process would open, and b itself
// otherwise.
func (s *suite) reopen(t *testing.T, b backend.Backend, url string) backend.Backend {
	t.Helper()
	if !s.cfg.Durable || url == "" {
		return b
	}
	b2, err := backend.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("reopen %s: %v", url, err)
	}
	t.Cleanup(func() { b2.Close() })
	return b2
}

// runWorker runs w until the test ends or stop is called.
func runWorker(t *testing.T, w *runtime.Worker) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// testLogger logs through t, so a worker's log shows only when its test fails. Lines
// logged after the test ended are dropped.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// run starts wf with input and awaits its result.
func run(t *testing.T, c *runtime.Client, wf *runtime.Workflow, input any, opts ...runtime.StartOption) (json.RawMessage, error) {
	t.Helper()
	ctx := ctxT(t)
	id, err := runtime.Start(ctx, c, wf, input, opts...)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	return runtime.Await(ctx, c, id)
}

// runInt runs wf and returns its int result, failing the test on a run error.
func runInt(t *testing.T, c *runtime.Client, wf *runtime.Workflow, input any, opts ...runtime.StartOption) int {
	t.Helper()
	res, err := run(t, c, wf, input, opts...)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return decodeInt(t, res)
}

func decodeInt(t *testing.T, data []byte) int {
	t.Helper()
	var v int
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("result %s: %v", data, err)
	}
	return v
}

// wantCounts checks how often each node ran.
func wantCounts(t *testing.T, f *flow, want map[string]int) {
	t.Helper()
	for id, n := range want {
		if got := f.count(id); got != n {
			t.Errorf("node %s ran %d times, want %d", id, got, n)
		}
	}
}

// eventually polls cond until it holds or the test times out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantRunError checks that err is the *RunError of a run that failed at node, with a
// reason containing each of parts.
func wantRunError(t *testing.T, err error, node string, parts ...string) {
	t.Helper()
	if !errors.Is(err, runtime.ErrRunFailed) || errors.Is(err, runtime.ErrRunCancelled) {
		t.Fatalf("err = %v, want a failed run", err)
	}
	var re *runtime.RunError
	if !errors.As(err, &re) {
		t.Fatalf("err = %T, want *runtime.RunError", err)
	}
	if re.Node != node {
		t.Errorf("failed node = %q, want %q (err: %v)", re.Node, node, err)
	}
	for _, p := range parts {
		if !strings.Contains(re.Reason, p) {
			t.Errorf("reason %q does not contain %q", re.Reason, p)
		}
	}
}

// wantStatus checks a run's status.
func wantStatus(t *testing.T, c *runtime.Client, id runtime.RunID, want string) {
	t.Helper()
	info, err := c.Status(ctxT(t), id)
	if err != nil || string(info.Status) != want {
		t.Fatalf("status of %s = %+v, %v; want %s", id, info, err, want)
	}
}

// logRecorder is a slog handler that remembers messages with their attributes, and
// passes them on to next.
type logRecorder struct {
	next slog.Handler
	mu   sync.Mutex
	msgs []string
}

func recordLogs(t *testing.T) (*logRecorder, *slog.Logger) {
	r := &logRecorder{next: testLogger(t).Handler()}
	return r, slog.New(r)
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(ctx context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, b.String())
	r.mu.Unlock()
	return r.next.Handle(ctx, rec)
}

// count is how many lines contain every one of parts.
func (r *logRecorder) count(parts ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
next:
	for _, m := range r.msgs {
		for _, p := range parts {
			if !strings.Contains(m, p) {
				continue next
			}
		}
		n++
	}
	return n
}
