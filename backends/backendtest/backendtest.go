// Package backendtest is the conformance suite every flowgen backend passes: one call
// from the backend's own test runs every case on it.
//
//	func TestBackend(t *testing.T) {
//		backendtest.Run(t, backendtest.Config{
//			Open: func(t *testing.T) (backend.Backend, string) {
//				url := "sqlite://" + filepath.Join(t.TempDir(), "flow.db")
//				b, err := backend.Open(context.Background(), url)
//				if err != nil {
//					t.Fatal(err)
//				}
//				t.Cleanup(func() { b.Close() })
//				return b, url
//			},
//			Durable: true,
//		})
//	}
//
// Run runs three tiers as subtests, each case on a fresh backend from Config.Open:
//
//   - primitives/…: the backend.Backend contract, directly: leases, acks, delays,
//     priorities, atomic and isolated transitions (exactly one of many concurrent
//     create-if-absent claims wins, a failed transition leaves nothing behind), run
//     records, listing stalled runs, and the optional Waiter and Expirer.
//   - e2e/…: the runtime on the backend, in process: every run scenario of the
//     contract (joins, routing, retries, fallbacks, loops, batches, subflows, sleep,
//     wait, cancellation, reruns), the generated example workflows, and the faults
//     of a distributed system simulated by wrapping the backend: lost acks, expired
//     leases, a worker that dies between recording a completion and enqueueing its
//     successors (the reconciler repairs the run), poison messages, outputs over the
//     backend's size limit.
//   - processes/…: worker processes (the generated moderationflow-worker, built once per
//     Run) sharing the backend through its URL, and a crash test that SIGKILLs them in
//     the middle of nodes while runs execute, restarts them, runs the reconciler and
//     checks that every run completes once with the right result, counting node
//     executions in a ledger the nodes write. Skipped for in-process backends (Open
//     returns no URL) and with -short.
//
// Cases within a tier run in parallel (go test's -parallel bounds how many), each with
// a deadline of 30s for every wait. A failing case names what broke; the worker's log
// of the case is in the test output.
//
// The crash test's size is set by environment variables: BACKENDTEST_CRASH_RUNS (runs
// of the content-moderation example, default 24), BACKENDTEST_CRASH_WORKERS (worker
// processes, default 3), BACKENDTEST_CRASH_KILL_EVERY (mean time between kills, default
// 400ms) and BACKENDTEST_CRASH_LEASE (the workers' lease, default 2s; the killer works
// for less than two leases, so that no node is killed more often than its attempts
// allow). Each node takes 20ms there, so that kills find nodes in flight. The test
// prints its figures with t.Logf (go test -v shows them), e.g.
//
//	BACKENDTEST_CRASH_RUNS=500 BACKENDTEST_CRASH_LEASE=10s go test -v \
//		-run 'TestConformance/processes/CrashTest' ./backends/sqlite
package backendtest

import (
	"context"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Config describes the backend under test.
type Config struct {
	// Open returns a fresh, empty backend isolated from every other test (its own
	// database, prefix or temp file), and a URL that other processes can pass to
	// runtime.Open or the worker's -backend flag to reach the same isolated backend ("" for
	// in-process-only backends such as mem://, which then skip the processes tier). Open
	// registers its own cleanup with t.Cleanup; the suite never closes the backend itself.
	Open func(t *testing.T) (b backend.Backend, url string)
	// MaxValueSize is the largest value the backend stores (0: no limit); values, run
	// inputs and results above it must fail with an error wrapping backend.ErrTooLarge.
	// The oversized-output cases are skipped when it is 0.
	MaxValueSize int
	// Durable says the state survives closing the backend and opening its URL again
	// (false for mem://); the reopening cases are skipped otherwise.
	Durable bool
	// Unordered says the queue delivers in no particular order, neither by priority nor
	// first in, first out (SQS, Azure Queue Storage); the ordering case is skipped.
	Unordered bool
	// MinLease is the shortest lease and job delay the queue honours, for queues that
	// count in whole seconds (SQS, Azure Queue Storage). Cases that let leases expire or
	// delay jobs use at least this. 0 means leases and delays of 100ms are honoured.
	MinLease time.Duration
}

// Run runs the whole suite on the backend cfg describes, as subtests of t named
// primitives/<case>, e2e/<case> and processes/<case>. Cases within a tier run in
// parallel.
func Run(t *testing.T, cfg Config) {
	if cfg.Open == nil {
		t.Fatal("backendtest: Config.Open is nil")
	}
	s := &suite{cfg: cfg}
	s.worker.dir = t.TempDir()
	s.group(t, "primitives", primitiveTests())
	s.group(t, "e2e", e2eTests())
	s.group(t, "processes", processTests())
}

// suite is one Run: the configuration and what its cases share.
type suite struct {
	cfg    Config
	worker workerBinary
}

// test is one case of the suite.
type test struct {
	name string
	fn   func(s *suite, t *testing.T)
}

// group runs tests as parallel subtests of a subtest named name.
func (s *suite) group(t *testing.T, name string, tests []test) {
	t.Run(name, func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tc.fn(s, t)
			})
		}
	})
}

// open returns a fresh backend for one case.
func (s *suite) open(t *testing.T) (backend.Backend, string) {
	t.Helper()
	b, url := s.cfg.Open(t)
	if b == nil {
		t.Fatal("backendtest: Config.Open returned a nil backend")
	}
	return b, url
}

// lease is d (stretched under the race detector), or the queue's shortest lease when
// that is longer. Cases that let leases expire or delay jobs derive their other
// durations from it.
func (s *suite) lease(d time.Duration) time.Duration { return max(d*timeScale, s.cfg.MinLease) }

// testTimeout bounds every wait of a case; nothing in the suite should come close.
const testTimeout = 30 * time.Second

// ctxT is a context bounded by testTimeout, cancelled when the test ends.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
