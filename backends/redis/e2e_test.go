package redis

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/examples/bench"
	"github.com/flowgen/flowgen/runtime"
	"github.com/flowgen/flowgen/runtime/backend"
)

// chain is a workflow n1 → n2 → … → nN; each node waits delay and adds 1 to its input.
func chain(id string, n int, delay time.Duration, execs *atomic.Int64) *runtime.Workflow {
	wf := &runtime.Workflow{ID: id, Version: "1", Start: []string{"n1"}, Terminals: []string{fmt.Sprintf("n%d", n)}, Nodes: map[string]*runtime.Node{}}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		node := &runtime.Node{ID: id, MaxAttempts: 3}
		if i > 1 {
			prev := fmt.Sprintf("n%d", i-1)
			node.Preds, node.Sources = []string{prev}, []string{prev}
		}
		if i < n {
			node.Edges = []runtime.Edge{{Target: fmt.Sprintf("n%d", i+1)}}
		}
		node.Exec = func(ctx context.Context, t *runtime.Task) (runtime.Output, error) {
			execs.Add(1)
			in := t.RunInput()
			if len(node.Sources) == 1 {
				in, _ = t.Output(node.Sources[0])
			}
			var v int
			if err := json.Unmarshal(in, &v); err != nil {
				return runtime.Output{}, runtime.Permanent(err)
			}
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return runtime.Output{}, ctx.Err()
			}
			out, _ := json.Marshal(v + 1)
			return runtime.Output{Data: out}, nil
		}
		wf.Nodes[id] = node
	}
	return wf
}

// startWorker runs a worker for wf on c until the test ends.
func startWorker(t *testing.T, c *runtime.Client, wf *runtime.Workflow, opts ...runtime.WorkerOption) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := runtime.NewWorker(c, opts...)
	w.Register(wf)
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// Redis restarted in the middle of a run: the worker reconnects and the run completes.
func TestRedisRestartMidRun(t *testing.T) {
	srv := startServer(t, "--appendonly", "yes", "--appendfsync", "always")
	u := prefixedURL(t, srv.url(), "poll=200ms")
	c := runtime.New(openT(t, u))
	var execs atomic.Int64
	wf := chain("restart", 8, 150*time.Millisecond, &execs)
	startWorker(t, c, wf, runtime.WithLease(time.Second), runtime.WithPollInterval(100*time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id, err := runtime.Start(ctx, c, wf, 100)
	if err != nil {
		t.Fatal(err)
	}
	for execs.Load() < 3 {
		if ctx.Err() != nil {
			t.Fatal("the run did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.stop()
	t.Logf("redis stopped after %d node executions", execs.Load())
	time.Sleep(2 * time.Second) // longer than the lease: in-flight calls fail, leases lapse
	srv.start()
	t.Log("redis restarted")
	res, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatalf("await after the restart: %v", err)
	}
	if string(res) != "108" {
		t.Fatalf("result = %s, want 108", res)
	}
	t.Logf("%d node executions for 8 nodes", execs.Load())
}

// A password and TLS (rediss://, with a private CA) both work.
func TestPasswordAndTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := writeCerts(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := startServer(t, "--requirepass", "s3cret", "--tls-port", fmt.Sprint(tlsPort),
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")

	plain := fmt.Sprintf("redis://:s3cret@127.0.0.1:%d/0", srv.port)
	secure := fmt.Sprintf("rediss://:s3cret@127.0.0.1:%d/0?ca=%s", tlsPort, caFile)
	for _, u := range []string{plain, secure} {
		b := openT(t, prefixedURL(t, u))
		var execs atomic.Int64
		wf := chain("tls", 3, 0, &execs)
		c := runtime.New(b)
		startWorker(t, c, wf, runtime.WithPollInterval(50*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		id, err := runtime.Start(ctx, c, wf, 1)
		if err != nil {
			t.Fatal(err)
		}
		res, err := runtime.Await(ctx, c, id)
		cancel()
		if err != nil || string(res) != "4" {
			t.Fatalf("%s: result %s, %v", strings.Split(u, "@")[1], res, err)
		}
	}
	_, err = Open(context.Background(), fmt.Sprintf("redis://:wrong@127.0.0.1:%d/0", srv.port))
	if err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("wrong password: err = %v", err)
	}
	_, err = Open(context.Background(), fmt.Sprintf("rediss://:s3cret@127.0.0.1:%d/0", tlsPort))
	if err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}
}

// writeCerts writes a CA and a server certificate for 127.0.0.1 signed by it.
func writeCerts(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowgen test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

// The reconciler finds a run whose job was lost and enqueues exactly its open node.
func TestReconcileLostJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := newBackend(t)
	c := runtime.New(b)
	var execs atomic.Int64
	wf := chain("lost", 3, 0, &execs)
	id, err := runtime.Start(ctx, c, wf, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The job of n1 is lost (say, a Redis failover dropped it).
	if err := b.rdb.Del(ctx, b.k.ready).Err(); err != nil {
		t.Fatal(err)
	}
	w := runtime.NewWorker(c, runtime.WithPollInterval(50*time.Millisecond))
	w.Register(wf)
	time.Sleep(1100 * time.Millisecond) // the progress index counts in seconds
	st, err := w.Reconcile(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Scanned != 1 || st.Stalled != 1 || st.Reconciled != 1 || st.Failed != 0 {
		t.Fatalf("stats = %+v", st)
	}
	startWorker(t, c, wf, runtime.WithPollInterval(50*time.Millisecond))
	res, err := runtime.Await(ctx, c, id)
	if err != nil || string(res) != "3" {
		t.Fatalf("result %s, %v", res, err)
	}
	if n := execs.Load(); n != 3 {
		t.Fatalf("%d node executions, want 3", n)
	}
	info, err := c.Status(ctx, id)
	if err != nil || info.Status != backend.Completed {
		t.Fatalf("status %+v, %v", info, err)
	}
}

// The benchmark shapes, every result checked and every node executed exactly once
// (chain, fan-out with an all-join, an any-join, and a 64-wide fan-in whose state
// outgrows the snapshots Dequeue returns).
func TestBenchShapes(t *testing.T) {
	u := testURL(t)
	var out strings.Builder
	cfg := bench.Config{Backend: u, Shapes: []string{"chain10", "fanout8", "diamond", "wide64"},
		Runs: 60, InFlight: []int{1, 16}, Concurrency: 8}
	results, err := bench.Run(context.Background(), cfg, nil, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, r := range results {
		if rt := r.PerNode["redis_round_trips_per_node"]; rt <= 0 || rt > 4 {
			t.Errorf("%s, %d in flight: %.1f round trips per node execution, want at most 4", r.Shape, r.InFlight, rt)
		}
	}
	// Two worker "processes" (backends of their own) and a client.
	cfg.Workers, cfg.InFlight = 2, []int{16}
	start := func(ctx context.Context, n int) error {
		for range n {
			go func() { _ = bench.Serve(ctx, u, 8) }()
		}
		return nil
	}
	if _, err := bench.Run(context.Background(), cfg, start, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
}

// A Read of a run's keys is answered from the snapshot a Dequeue returned only while
// no later version of the run's state has been seen.
func TestSnapshotVersions(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	createRun(t, b, "r")
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { return tx.Put("k", []byte("new")) }); err != nil {
		t.Fatal(err)
	}
	rec, _ := b.rdb.HGet(ctx, b.k.run("r"), "rec").Result()
	sv, _ := b.rdb.HGet(ctx, b.k.run("r"), "sv").Int64()
	snap := func(version int64, k string) any {
		return []any{"rec", rec, "rv", "1", "u", "1", "sv", fmt.Sprint(version), ".k", k}
	}
	read := func() (string, bool) {
		t.Helper()
		before := b.pipe.calls.Load()
		_, vals, err := b.Read(ctx, "r", "k")
		if err != nil {
			t.Fatal(err)
		}
		return string(vals["k"]), b.pipe.calls.Load() == before
	}
	b.snapshot("r", snap(sv-1, "old")) // older than this process's own commit
	if v, local := read(); v != "new" || local {
		t.Fatalf("read %q (local %v) after an older snapshot; want new, from Redis", v, local)
	}
	b.snapshot("r", snap(sv+1, "snap"))
	if v, local := read(); v != "snap" || !local {
		t.Fatalf("read %q (local %v); want the fresh snapshot's value", v, local)
	}
	b.snapshot("r", snap(sv, "older")) // arrives late: ignored
	if v, _ := read(); v != "snap" {
		t.Fatalf("read %q after a late, older snapshot", v)
	}
	b.snapshot("r", sv+2) // a Dequeue saw a later version, without a snapshot
	if v, local := read(); v != "new" || local {
		t.Fatalf("read %q (local %v) after a later version was seen; want Redis's value", v, local)
	}
}
