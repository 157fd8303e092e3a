package backendtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowgen/flowgen/examples/generated/moderationflow"
	moderation "github.com/flowgen/flowgen/examples/moderation/nodes"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// processTests are the cases of the processes tier: worker processes sharing the
// backend through its URL.
func processTests() []test {
	return []test{
		{"SeveralWorkerProcesses", (*suite).severalWorkerProcesses},
		{"CrashTest", (*suite).crashTest},
	}
}

// workerPackage is the generated worker the processes tier runs, relative to the
// module root.
const workerPackage = "./examples/generated/cmd/moderationflow-worker"

// workerBinary is the worker built once per Run, into dir (the Run's temp dir).
type workerBinary struct {
	dir  string
	mu   sync.Mutex
	path string
	err  error
}

// processes skips the test unless the backend can be shared by processes, and returns
// a client on a fresh backend, its URL and the worker binary.
func (s *suite) processes(t *testing.T) (*runtime.Client, string, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: starts worker processes")
	}
	b, url := s.open(t)
	if url == "" {
		t.Skip("Config.Open returns no URL: the backend lives in one process")
	}
	return runtime.New(b), url, s.workerBin(t)
}

// workerBin builds the worker binary the first time a case needs it.
func (s *suite) workerBin(t *testing.T) string {
	t.Helper()
	w := &s.worker
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.path == "" && w.err == nil {
		w.path, w.err = buildWorker(w.dir)
	}
	if w.err != nil {
		t.Fatal(w.err)
	}
	return w.path
}

// buildWorker builds the worker binary into dir.
func buildWorker(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "moderationflow-worker")
	cmd := exec.Command("go", "build", "-o", bin, workerPackage)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the worker (go build %s in %s): %v\n%s", workerPackage, root, err, out)
	}
	return bin, nil
}

// moduleRoot finds the flowgen module's root above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.HasPrefix(bytes.TrimSpace(data), []byte("module github.com/flowgen/flowgen\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of module github.com/flowgen/flowgen above %s", dir)
		}
	}
}

// workerProc is a running worker process.
type workerProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process exited
}

// procConfig is how worker processes run.
type procConfig struct {
	url, ledger string        // backend, and the file the nodes append their executions to
	lease       time.Duration // a killed worker's jobs are delivered again this long after its last heartbeat
	nodeTime    time.Duration // how long each node takes
}

// startWorkerProc starts a worker process; it is stopped when the test ends.
func startWorkerProc(t *testing.T, bin string, pc procConfig) (*workerProc, error) {
	cmd := exec.Command(bin, "-backend", pc.url, "-concurrency", "4", "-lease", pc.lease.String(), "-log-level", "info")
	cmd.Env = append(os.Environ(), moderation.LedgerEnv+"="+pc.ledger, moderation.DelayEnv+"="+pc.nodeTime.String())
	p := &workerProc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.kill(syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			if log := p.stderr.String(); log != "" {
				t.Logf("worker %d:\n%s", cmd.Process.Pid, log)
			}
		}
	})
	return p, nil
}

// waitStarted waits until the worker says that it started (it then takes jobs).
func (p *workerProc) waitStarted(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !strings.Contains(p.stderr.String(), "worker started") {
		select {
		case <-p.done:
			t.Fatalf("worker %d exited at start:\n%s", p.cmd.Process.Pid, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d did not start:\n%s", p.cmd.Process.Pid, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill sends sig to the process if it still runs.
func (p *workerProc) kill(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// startPosts starts n content-moderation runs with ids prefix-0… and returns their ids
// and the audit entry each must end with.
func startPosts(t *testing.T, c *runtime.Client, prefix string, n int) ([]runtime.RunID, []string) {
	t.Helper()
	ctx := ctxT(t)
	ids := make([]runtime.RunID, n)
	want := make([]string, n)
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		var post moderation.Post
		post, want[i] = moderationPost(i, id)
		var err error
		if ids[i], err = moderationflow.StartContentModerationRun(ctx, c, post, runtime.WithRunID(runtime.RunID(id))); err != nil {
			t.Fatal(err)
		}
	}
	return ids, want
}

// awaitPosts awaits the runs of startPosts and checks their results.
func awaitPosts(t *testing.T, ctx context.Context, c *runtime.Client, ids []runtime.RunID, want []string) {
	t.Helper()
	for i, id := range ids {
		got, err := moderationflow.AwaitContentModerationRun(ctx, c, id)
		if err != nil {
			t.Errorf("run %s: %v", id, err)
			continue
		}
		if got.Entry != want[i] {
			t.Errorf("run %s: %q, want %q", id, got.Entry, want[i])
		}
	}
}

func (s *suite) severalWorkerProcesses(t *testing.T) {
	c, url, bin := s.processes(t)
	ledger := filepath.Join(t.TempDir(), "ledger")
	var procs []*workerProc
	for range 3 {
		p, err := startWorkerProc(t, bin, procConfig{url: url, ledger: ledger, lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	for _, p := range procs { // every worker takes jobs before the runs start
		p.waitStarted(t)
	}
	const runs = 40
	ids, want := startPosts(t, c, "multi", runs)
	awaitPosts(t, ctxT(t), c, ids, want)
	l := readLedger(t, ledger)
	l.check(t, ids)
	if len(l.pids) < 2 {
		t.Errorf("only %d of 3 worker processes executed nodes", len(l.pids))
	}
	t.Logf("%d runs, %d node executions by %d processes", runs, l.lines, len(l.pids))
}

// crashConfig is the crash test's size, from the environment.
type crashConfig struct {
	runs, workers int
	killEvery     time.Duration // mean time between kills
	lease         time.Duration // the workers' lease
	nodeTime      time.Duration // how long each node takes
}

func crashSize(t *testing.T) crashConfig {
	cfg := crashConfig{runs: 24, workers: 3, killEvery: 400 * time.Millisecond, lease: 2 * time.Second, nodeTime: 20 * time.Millisecond}
	for name, dst := range map[string]*int{"BACKENDTEST_CRASH_RUNS": &cfg.runs, "BACKENDTEST_CRASH_WORKERS": &cfg.workers} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive integer", name, v)
			}
			*dst = n
		}
	}
	for name, dst := range map[string]*time.Duration{"BACKENDTEST_CRASH_KILL_EVERY": &cfg.killEvery, "BACKENDTEST_CRASH_LEASE": &cfg.lease} {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				t.Fatalf("%s=%q: want a positive duration", name, v)
			}
			*dst = d
		}
	}
	return cfg
}

func (s *suite) crashTest(t *testing.T) {
	// N worker processes execute M content-moderation runs, started a few at a time,
	// while a killer SIGKILLs one of them every so often (at random among those running
	// a node at that moment) and starts a new one in its place. The reconciler runs now and then, and once more at the end. Every
	// run must complete exactly once with its result: no node executed twice in the
	// same attempt (a join fired twice would), none beyond its attempts.
	//
	// A lease that expires because its worker was killed counts as an attempt, and the
	// example's nodes have three. The killer stops before two leases have passed, so
	// that no job can be killed more than twice: a killed job comes back a lease later.
	c, url, bin := s.processes(t)
	size := crashSize(t)
	pc := procConfig{url: url, ledger: filepath.Join(t.TempDir(), "ledger"), lease: size.lease, nodeTime: size.nodeTime}
	killFor := 2*size.lease - size.lease/4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+10*size.lease)
	defer cancel()
	begin := time.Now()
	procs := make([]*workerProc, size.workers)
	for i := range procs {
		var err error
		if procs[i], err = startWorkerProc(t, bin, pc); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		p.waitStarted(t)
	}

	stopKiller := make(chan struct{})
	killerDone := make(chan struct{})
	kills := 0
	var killErr error
	go func() {
		defer close(killerDone)
		killing := time.Now()
		for {
			pause := time.Duration(float64(size.killEvery) * (0.5 + rand.Float64()))
			if time.Since(killing)+pause > killFor {
				return
			}
			select {
			case <-stopKiller:
				return
			case <-time.After(pause):
			}
			i := pickVictim(pc, procs)
			procs[i].kill(syscall.SIGKILL)
			<-procs[i].done
			kills++
			if procs[i], killErr = startWorkerProc(t, bin, pc); killErr != nil {
				return
			}
		}
	}()

	// Start the runs a few at a time, so that they meet the killer.
	ids := make([]runtime.RunID, size.runs)
	want := make([]string, size.runs)
	for i := range ids {
		id := fmt.Sprintf("crash-%d", i)
		var post moderation.Post
		post, want[i] = moderationPost(i, id)
		var err error
		if ids[i], err = moderationflow.StartContentModerationRun(ctx, c, post, runtime.WithRunID(runtime.RunID(id))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(size.killEvery / 8)
	}

	// Wait for every run to end. A killed worker's jobs come back a lease later; the
	// reconciler repairs what nothing else would (on a backend whose queue and state
	// commit together, nothing), with a threshold well above the lease so that it
	// never duplicates a job that is merely waiting for its lease to expire.
	reconcileAfter := 5 * size.lease
	rw := runtime.NewWorker(c, runtime.WithLogger(testLogger(t)))
	moderationflow.Register(rw)
	var stats runtime.ReconcileStats
	reconcile := func() {
		st, err := rw.Reconcile(ctx, reconcileAfter)
		if err != nil {
			t.Errorf("Reconcile: %v", err)
		}
		stats.Scanned += st.Scanned
		stats.Stalled += st.Stalled
		stats.Reconciled += st.Reconciled
		stats.Failed += st.Failed
	}
	lastReconcile := time.Now()
	for ctx.Err() == nil {
		rs, err := c.Backend().ListRuns(ctx, backend.RunFilter{Status: backend.Running, Limit: 1})
		if err != nil {
			t.Fatalf("ListRuns: %v", err)
		}
		if len(rs) == 0 {
			break
		}
		if time.Since(lastReconcile) > reconcileAfter {
			reconcile()
			lastReconcile = time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stopKiller)
	<-killerDone
	if killErr != nil {
		t.Fatalf("restarting a worker: %v", killErr)
	}
	reconcile()
	awaitPosts(t, ctx, c, ids, want)
	elapsed := time.Since(begin)

	l := readLedger(t, pc.ledger)
	l.check(t, ids)
	if kills == 0 {
		t.Error("the killer killed no worker")
	}
	// Every run executes six nodes: three checks, the triage, one branch, the audit.
	t.Logf("crash test: %d runs, %d worker processes, %d kills, %d redeliveries (node executions as attempt > 1), "+
		"%d node executions (%d beyond one per node), reconciled runs %d (%+v), elapsed %v",
		size.runs, size.workers, kills, l.reexecutions, l.lines, l.lines-6*size.runs, stats.Reconciled, stats,
		elapsed.Round(time.Millisecond))
}

// pickVictim returns the index of a worker to kill: one running a node now (it started
// one less than a node's time ago), chosen at random, or any when none is.
func pickVictim(pc procConfig, procs []*workerProc) int {
	busy := map[string]bool{}
	if data, err := os.ReadFile(pc.ledger); err == nil {
		since := time.Now().Add(-pc.nodeTime).UnixNano()
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) == 5 {
				if ns, err := strconv.ParseInt(f[4], 10, 64); err == nil && ns > since {
					busy[f[3]] = true
				}
			}
		}
	}
	var candidates []int
	for i, p := range procs {
		if busy[strconv.Itoa(p.cmd.Process.Pid)] {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		return rand.IntN(len(procs))
	}
	return candidates[rand.IntN(len(candidates))]
}

// ledgerData is what the nodes wrote to the ledger: one line per node execution.
type ledgerData struct {
	lines        int
	execs        map[string]map[string][]int // run -> node -> attempts executed
	pids         map[string]bool
	reexecutions int // executions of an attempt after the first
}

func readLedger(t *testing.T, path string) *ledgerData {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	defer f.Close()
	l := &ledgerData{execs: map[string]map[string][]int{}, pids: map[string]bool{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 5 {
			t.Fatalf("ledger line %q: want run, node, attempt, pid and time", sc.Text())
		}
		attempt, err := strconv.Atoi(fields[2])
		if err != nil {
			t.Fatalf("ledger line %q: %v", sc.Text(), err)
		}
		run, node := fields[0], fields[1]
		if l.execs[run] == nil {
			l.execs[run] = map[string][]int{}
		}
		l.execs[run][node] = append(l.execs[run][node], attempt)
		l.pids[fields[3]] = true
		l.lines++
		if attempt > 1 {
			l.reexecutions++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("ledger: %v", err)
	}
	return l
}

// check asserts that every node of every run executed at most once per attempt (a
// second execution with the same attempt is a second job: a node or join fired twice)
// and within its attempts, and that the any-join audit ran in every run.
func (l *ledgerData) check(t *testing.T, ids []runtime.RunID) {
	t.Helper()
	wf := moderationflow.ContentModerationWorkflow
	if len(l.execs) != len(ids) {
		t.Errorf("the ledger has executions of %d runs, want %d", len(l.execs), len(ids))
	}
	for _, id := range ids {
		nodes := l.execs[string(id)]
		if len(nodes[moderationflow.ContentModerationNodeAudit]) == 0 {
			t.Errorf("run %s: the audit never ran", id)
		}
		for node, attempts := range nodes {
			sort.Ints(attempts)
			for i, a := range attempts {
				if i > 0 && attempts[i-1] == a {
					t.Errorf("run %s: node %s executed twice as attempt %d (attempts %v): it fired twice", id, node, a, attempts)
				}
				if max := wf.Nodes[node].MaxAttempts; a > max {
					t.Errorf("run %s: node %s executed as attempt %d, beyond its %d", id, node, a, max)
				}
			}
		}
	}
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
