package bench

import (
	"context"
	"testing"

	"github.com/flowgen/flowgen/examples/generated/benchflow"
	"github.com/flowgen/flowgen/runtime"
)

// BenchmarkShapes runs each shape on mem:// sequentially and with 64 runs in flight,
// reporting node executions per second and run latency. One op is one run.
func BenchmarkShapes(b *testing.B) {
	ctx := context.Background()
	c, err := runtime.Open(ctx, "mem://")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	w := runtime.NewWorker(c, runtime.WithConcurrency(16))
	benchflow.Register(w)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	for _, shape := range Shapes {
		for _, inflight := range []int{1, 64} {
			b.Run(shape.Name+"/inflight="+itoa(inflight), func(b *testing.B) {
				r, err := Measure(ctx, c, shape, b.N, min(inflight, b.N), true)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.NodeExecsPerS, "node-execs/s")
				b.ReportMetric(r.P50ms, "p50-ms")
				b.ReportMetric(r.P99ms, "p99-ms")
			})
		}
	}
}

// TestShapes checks every shape's results on mem://, a few runs each.
func TestShapes(t *testing.T) {
	res, err := Run(context.Background(), Config{
		Backend: "mem://", Shapes: []string{"chain10", "fanout8", "diamond", "wide64"},
		Runs: 20, InFlight: []int{1, 8}, Concurrency: 8,
	}, nil, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 8 {
		t.Fatalf("%d measurements, want 8", len(res))
	}
	for _, r := range res {
		if r.Runs != 20 || r.RunsPerS <= 0 || r.P50ms <= 0 || r.P99ms < r.P50ms {
			t.Errorf("implausible measurement %+v", r)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func itoa(n int) string {
	if n == 1 {
		return "1"
	}
	return "64"
}
