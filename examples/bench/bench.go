// Package bench measures flowgen on the shared benchmark shapes (chain10, fanout8,
// diamond, wide64): runs per second, node executions per second and run latency, with
// every result checked. `flowgen bench` and `go test -bench` both use it.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowgen/flowgen/examples/bench/nodes"
	"github.com/flowgen/flowgen/examples/generated/benchflow"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Shape is one benchmark workflow with its expected result.
type Shape struct {
	Name  string
	Nodes int // node executions per run
	// Start starts a run with the given seed; Await returns its result.
	Start  func(ctx context.Context, c *runtime.Client, seed int) (runtime.RunID, error)
	Await  func(ctx context.Context, c *runtime.Client, id runtime.RunID) (int, error)
	Expect func(seed int) int
}

func start(f func(context.Context, *runtime.Client, int, ...runtime.StartOption) (runtime.RunID, error)) func(context.Context, *runtime.Client, int) (runtime.RunID, error) {
	return func(ctx context.Context, c *runtime.Client, seed int) (runtime.RunID, error) { return f(ctx, c, seed) }
}

// Shapes are the benchmark shapes, in the order of the shared README.
var Shapes = []Shape{
	{"chain10", 10, start(benchflow.StartChain10Run), benchflow.AwaitChain10Run, func(s int) int { return s + 10 }},
	{"fanout8", 11, start(benchflow.StartFanout8Run), benchflow.AwaitFanout8Run, func(s int) int { return 8*(s+2) + 2 }},
	{"diamond", 3, start(benchflow.StartDiamondRun), benchflow.AwaitDiamondRun, func(s int) int {
		if s%2 != 0 {
			return s + 3
		}
		return s + 12
	}},
	{"wide64", 66, start(benchflow.StartWide64Run), benchflow.AwaitWide64Run, func(s int) int { return 64*(s+2) + 1 }},
}

// ShapeByName returns the named shape.
func ShapeByName(name string) (Shape, error) {
	for _, s := range Shapes {
		if s.Name == name {
			return s, nil
		}
	}
	return Shape{}, fmt.Errorf("unknown shape %q (known: chain10, fanout8, diamond, wide64)", name)
}

// Result is one measurement.
type Result struct {
	Shape         string  `json:"shape"`
	Backend       string  `json:"backend"`
	Workers       int     `json:"workers"`
	InFlight      int     `json:"inflight"`
	Runs          int     `json:"runs"`
	RunsPerS      float64 `json:"runs_per_s"`
	NodeExecsPerS float64 `json:"node_execs_per_s"`
	P50ms         float64 `json:"p50_ms"`
	P99ms         float64 `json:"p99_ms"`
	// PerNode holds the backend's counters (backend.Metered) per node execution,
	// keyed "<counter>_per_node", e.g. "redis_cmds_per_node".
	PerNode map[string]float64 `json:"-"`
}

// MarshalJSON flattens PerNode into the object, as `flowgen bench -json` prints it.
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	data, err := json.Marshal(plain(r))
	if err != nil || len(r.PerNode) == 0 {
		return data, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	for k, v := range r.PerNode {
		m[k] = v
	}
	return json.Marshal(m)
}

// Measure starts runs of shape on c, keeping inflight of them running at once, and
// checks every result. Workers must already be running on c's backend. When counted
// is true the node functions run in this process and every node of every run must have
// executed exactly once.
func Measure(ctx context.Context, c *runtime.Client, shape Shape, runs, inflight int, counted bool) (Result, error) {
	res := Result{Shape: shape.Name, InFlight: inflight, Runs: runs}
	latencies := make([]time.Duration, runs)
	metered, _ := c.Backend().(backend.Metered)
	var countersBefore map[string]float64
	if metered != nil {
		var err error
		if countersBefore, err = metered.Counters(ctx); err != nil {
			return res, err
		}
	}
	before := nodes.Executions.Load()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	begin := time.Now()
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= runs {
					return
				}
				t0 := time.Now()
				err := one(ctx, c, shape, i)
				latencies[i] = time.Since(t0)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	if firstErr != nil {
		return res, firstErr
	}
	if got, want := nodes.Executions.Load()-before, int64(runs*shape.Nodes); counted && got != want {
		return res, fmt.Errorf("%s: %d node executions for %d runs, want exactly %d", shape.Name, got, runs, want)
	}
	if metered != nil {
		after, err := metered.Counters(ctx)
		if err != nil {
			return res, err
		}
		res.PerNode = map[string]float64{}
		for k, v := range after {
			res.PerNode[k+"_per_node"] = (v - countersBefore[k]) / float64(runs*shape.Nodes)
		}
	}
	slices.Sort(latencies)
	res.RunsPerS = float64(runs) / elapsed.Seconds()
	res.NodeExecsPerS = res.RunsPerS * float64(shape.Nodes)
	res.P50ms = ms(latencies[runs/2])
	res.P99ms = ms(latencies[min(runs-1, runs*99/100)])
	return res, nil
}

func one(ctx context.Context, c *runtime.Client, shape Shape, seed int) error {
	id, err := shape.Start(ctx, c, seed)
	if err != nil {
		return err
	}
	got, err := shape.Await(ctx, c, id)
	if err != nil {
		return err
	}
	if want := shape.Expect(seed); got != want {
		return fmt.Errorf("%s run %s with seed %d: result %d, want %d", shape.Name, id, seed, got, want)
	}
	return nil
}

// CountersText formats the per-node counters, e.g. "  redis_cmds_per_node 4.1".
func (r Result) CountersText() string {
	m := r.PerNode
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s %.1f", k, m[k])
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Config is a benchmark session.
type Config struct {
	Backend     string
	Shapes      []string
	Runs        int
	InFlight    []int // each shape is measured at each of these
	Concurrency int   // worker concurrency
	Workers     int   // worker processes; 0 runs one worker inside this process
}

// Run measures every shape, printing a line per measurement to progress. With
// cfg.Workers 0 a worker runs inside this process, and every node execution is counted;
// otherwise startWorkers must start that many worker processes on cfg.Backend (and stop
// them when ctx is done), and results are still checked, but executions happen elsewhere.
func Run(ctx context.Context, cfg Config, startWorkers func(ctx context.Context, n int) error, progress io.Writer) ([]Result, error) {
	c, err := runtime.Open(ctx, cfg.Backend)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	inProcess := cfg.Workers == 0
	if inProcess {
		w := runtime.NewWorker(c, runtime.WithConcurrency(cfg.Concurrency))
		benchflow.Register(w)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		defer func() { stop(); <-done }()
	} else if err := startWorkers(wctx, cfg.Workers); err != nil {
		return nil, err
	}

	var out []Result
	for _, name := range cfg.Shapes {
		shape, err := ShapeByName(name)
		if err != nil {
			return nil, err
		}
		// Warm up: connections, caches, the scheduler.
		if _, err := Measure(ctx, c, shape, min(cfg.Runs, 200), 8, inProcess); err != nil {
			return nil, err
		}
		for _, inflight := range cfg.InFlight {
			r, err := Measure(ctx, c, shape, cfg.Runs, inflight, inProcess)
			if err != nil {
				return nil, err
			}
			r.Backend, r.Workers = cfg.Backend, max(cfg.Workers, 1)
			fmt.Fprintf(progress, "%-8s workers=%d inflight=%-3d runs=%-6d %9.0f runs/s %10.0f node execs/s  p50 %7.2f ms  p99 %7.2f ms%s\n",
				r.Shape, r.Workers, r.InFlight, r.Runs, r.RunsPerS, r.NodeExecsPerS, r.P50ms, r.P99ms, r.CountersText())
			out = append(out, r)
		}
	}
	return out, nil
}

// Serve runs a benchmark worker on backendURL until ctx is done: what each worker
// process of `flowgen bench -workers N` runs.
func Serve(ctx context.Context, backendURL string, concurrency int) error {
	c, err := runtime.Open(ctx, backendURL)
	if err != nil {
		return err
	}
	defer c.Close()
	w := runtime.NewWorker(c, runtime.WithConcurrency(concurrency))
	benchflow.Register(w)
	return w.Run(ctx)
}
