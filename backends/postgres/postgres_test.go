package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/runtime/backend"
)

// The tests need a PostgreSQL server: FLOWGEN_TEST_POSTGRES is its URL. Each test works in
// a schema of its own, dropped when it ends.

const envURL = "FLOWGEN_TEST_POSTGRES"

// TestMain fails the package at once, with what to do, when there is no server: these
// tests are never skipped.
func TestMain(m *testing.M) {
	u := os.Getenv(envURL)
	if u == "" {
		fmt.Fprintf(os.Stderr, "FAIL: %s is not set: the postgres backend's tests need a PostgreSQL server.\n"+
			"Start a throwaway one and point the tests at it with\n"+
			"\teval \"$(scripts/services.sh start postgres)\"\n"+
			"or run everything with scripts/dev.sh test.\n", envURL)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, err := pgx.Connect(ctx, u)
	if err == nil {
		err = conn.Ping(ctx)
		conn.Close(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s=%s does not answer: %v\n"+
			"Start a throwaway server with\n\teval \"$(scripts/services.sh start postgres)\"\n", envURL, redact(u), err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// serverURL returns the test server's URL (TestMain checked it).
func serverURL(t testing.TB) string {
	t.Helper()
	return os.Getenv(envURL)
}

var schemaChars = regexp.MustCompile(`[^a-z0-9]+`)

// newSchema returns a schema name unique to this test, and drops the schema when the
// test ends (after the test's other cleanups, which close its backends).
func newSchema(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	name := schemaChars.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	schema := "t_" + strings.Trim(name, "_") + "_" + hex.EncodeToString(rnd[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// schemaURL returns the server URL with the query options set.
func schemaURL(t testing.TB, opts ...string) string {
	t.Helper()
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatalf("%s: %v", envURL, err)
	}
	q := u.Query()
	for i := 0; i+1 < len(opts); i += 2 {
		q.Set(opts[i], opts[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// open returns a backend on a fresh schema, closed when the test ends, and its URL.
func open(t testing.TB, opts ...Option) (*Backend, string) {
	t.Helper()
	u := schemaURL(t, "schema", newSchema(t))
	return openURL(t, u, opts...), u
}

// openURL returns a backend on u, closed when the test ends.
func openURL(t testing.TB, u string, opts ...Option) *Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, u, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func job(id string, prio int) backend.Job {
	return backend.Job{ID: id, Run: "r", Workflow: "wf", Version: "v1", Kind: backend.Exec, Node: "n", Attempt: 1, Priority: prio}
}

func ids(ds []*backend.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Job.ID
	}
	return out
}

// TestConformance runs the shared backend suite, each case on a schema of its own.
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			b, u := open(t)
			return b, u
		},
		Durable: true,
	})
}

func TestMigrations(t *testing.T) {
	ctx := ctxT(t)
	schema := newSchema(t)
	u := schemaURL(t, "schema", schema)

	// Several processes opening a fresh database at once migrate it once.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := New(ctx, u)
			if err == nil {
				b.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent New: %v", err)
		}
	}
	b := openURL(t, u)
	var n, v int
	if err := b.Pool().QueryRow(ctx, `SELECT count(*), max(version) FROM schema_version`).Scan(&n, &v); err != nil {
		t.Fatal(err)
	}
	if n != SchemaVersion() || v != SchemaVersion() {
		t.Fatalf("schema_version has %d rows up to %d, want %d", n, v, SchemaVersion())
	}
	for _, table := range []string{"runs", "run_kv", "jobs"} {
		var ok bool
		if err := b.Pool().QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema+"."+table).Scan(&ok); err != nil || !ok {
			t.Errorf("table %s.%s missing (%v)", schema, table, err)
		}
	}

	// migrate=false accepts a schema at this binary's version.
	openURL(t, u+"&migrate=false")
}

func TestMigrationFiles(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].version != 1 {
		t.Fatalf("migrations = %v", ms)
	}
}

func TestSchemaTooNew(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t)
	if _, err := b.Pool().Exec(ctx, `INSERT INTO schema_version (version, name) VALUES ($1, 'from the future')`, SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	_, err := New(ctx, u)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("New on a newer schema = %v, want ErrSchemaTooNew", err)
	}
	if want := fmt.Sprintf("at version %d but this binary knows versions up to %d", SchemaVersion()+1, SchemaVersion()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

func TestMigrateOff(t *testing.T) {
	u := schemaURL(t, "schema", newSchema(t), "migrate", "false")
	_, err := New(ctxT(t), u)
	if !errors.Is(err, ErrSchemaOutdated) {
		t.Fatalf("New with migrate=false on an empty schema = %v, want ErrSchemaOutdated", err)
	}
}

func TestURLOptions(t *testing.T) {
	ctx := ctxT(t)
	for _, bad := range []string{"poll=fast", "poll=-1s", "notify=maybe", "migrate=2", "worker_id="} {
		u := schemaURL(t) + "&" + bad
		if _, err := New(ctx, u); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad, "=", 2)[0]) {
			t.Errorf("New(…%s) = %v, want an error naming the option", bad, err)
		}
	}
	if _, err := New(ctx, "mysql://localhost/db"); err == nil {
		t.Error("New accepted a mysql:// URL")
	}

	// Both schemes are registered; the options reach the backend.
	schema := newSchema(t)
	u := strings.Replace(schemaURL(t, "schema", schema, "worker_id", "w-7", "poll", "250ms", "notify", "false"), "postgres://", "postgresql://", 1)
	bb, err := backend.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Close()
	b := bb.(*Backend)
	if b.Schema() != schema || b.WorkerID() != "w-7" || b.opts.poll != 250*time.Millisecond || b.opts.notify {
		t.Errorf("options = %+v", b.opts)
	}
	if err := b.Enqueue(ctx, job("a", 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Dequeue(ctx, 1, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	var worker string
	if err := b.Pool().QueryRow(ctx, `SELECT worker_id FROM jobs`).Scan(&worker); err != nil || worker != "w-7" {
		t.Errorf("worker_id = %q, %v; want w-7", worker, err)
	}

	// Options given to New override the URL's.
	b2 := openURL(t, u, WithWorkerID("w-8"), WithPollInterval(time.Second))
	if b2.WorkerID() != "w-8" || b2.opts.poll != time.Second {
		t.Errorf("options = %+v", b2.opts)
	}
	if def := defaultOptions(); !strings.HasSuffix(def.workerID, fmt.Sprintf("-%d", os.Getpid())) {
		t.Errorf("default worker id %q is not host-pid", def.workerID)
	}
}

func TestSkipLockedConcurrency(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t)
	other := openURL(t, u) // a second process
	const n = 600
	jobs := make([]backend.Job, n)
	for i := range jobs {
		jobs[i] = job(fmt.Sprintf("j%03d", i), i%3)
	}
	if err := b.Enqueue(ctx, jobs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := b
			if g%2 == 1 {
				q = other
			}
			for {
				ds, err := q.Dequeue(ctx, 1+g%4, time.Minute, 0)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ds) == 0 {
					return
				}
				mu.Lock()
				for _, d := range ds {
					seen[d.Job.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("%d distinct jobs dequeued, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("job %s dequeued %d times", id, k)
		}
	}
}

func TestPriorityFIFO(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	// Enqueued one by one and in one call: priority first, then arrival.
	for _, j := range []backend.Job{job("low1", 0), job("high1", 5), job("low2", 0)} {
		if err := b.Enqueue(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Enqueue(ctx, job("high2", 5), job("mid", 2), job("low3", 0), job("neg", -1)); err != nil {
		t.Fatal(err)
	}
	want := []string{"high1", "high2", "mid", "low1", "low2", "low3", "neg"}
	first, err := b.Dequeue(ctx, 3, time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	got = append(got, ids(first)...)
	for {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		got = append(got, ids(ds)...)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("dequeued %v, want %v", got, want)
	}
}

func TestStaleLease(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	if err := b.Enqueue(ctx, job("a", 0)); err != nil {
		t.Fatal(err)
	}
	first, err := b.Dequeue(ctx, 1, 50*time.Millisecond, 0)
	if err != nil || len(first) != 1 || first[0].Deliveries != 1 {
		t.Fatalf("Dequeue = %v, %v", first, err)
	}
	if ds, _ := b.Dequeue(ctx, 1, time.Minute, 0); len(ds) != 0 {
		t.Fatalf("a leased job was delivered again: %v", ids(ds))
	}
	// The lease expires: the job is delivered again, and the delivery counts.
	second, err := b.Dequeue(ctx, 1, time.Minute, 2*time.Second)
	if err != nil || len(second) != 1 || second[0].Job.ID != "a" || second[0].Deliveries != 2 {
		t.Fatalf("Dequeue after the lease expired = %v, %v; want a, 2nd delivery", second, err)
	}
	// The first holder's handle is stale: none of its calls changes anything.
	stale := first[0]
	if err := b.Extend(ctx, time.Hour, stale); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if err := b.Requeue(ctx, stale, job("replaced", 0)); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, stale, "stale"); err != nil {
		t.Fatal(err)
	}
	var (
		id         string
		deliveries int
		dead       bool
		leaseLeft  time.Duration
	)
	err = b.Pool().QueryRow(ctx, `SELECT id, deliveries, dead, visible_at - now() FROM jobs`).Scan(&id, &deliveries, &dead, &leaseLeft)
	if err != nil || id != "a" || deliveries != 2 || dead || leaseLeft > 2*time.Minute {
		t.Fatalf("job = %s, %d deliveries, dead %v, lease left %v, %v; want the second lease untouched", id, deliveries, dead, leaseLeft, err)
	}
	// The current holder's handle works.
	if err := b.Ack(ctx, second[0]); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Pending(ctx); err != nil || n != 0 {
		t.Fatalf("Pending = %d, %v; want 0", n, err)
	}
}

func TestRequeueExtendDeadLetter(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	if err := b.Enqueue(ctx, job("a", 0), job("b", 0)); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Dequeue(ctx, 2, 100*time.Millisecond, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("Dequeue = %v, %v", ds, err)
	}
	// a is renewed past its first lease; b is requeued as b2, delayed.
	if err := b.Extend(ctx, time.Minute, ds[0]); err != nil {
		t.Fatal(err)
	}
	next := job("b2", 0)
	next.Attempt = 2
	next.NotBefore = time.Now().Add(150 * time.Millisecond)
	if err := b.Requeue(ctx, ds[1], next); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Dequeue(ctx, 2, time.Minute, 0); len(got) != 0 {
		t.Fatalf("dequeued %v before b2's time", ids(got))
	}
	got, err := b.Dequeue(ctx, 2, time.Minute, 2*time.Second)
	if err != nil || len(got) != 1 || got[0].Job.ID != "b2" || got[0].Job.Attempt != 2 || got[0].Deliveries != 1 {
		t.Fatalf("Dequeue = %+v, %v; want b2 (attempt 2, first delivery)", got, err)
	}
	if !got[0].Job.NotBefore.Round(time.Millisecond).Equal(next.NotBefore.Round(time.Millisecond)) {
		t.Errorf("NotBefore = %v, want %v", got[0].Job.NotBefore, next.NotBefore)
	}
	if err := b.DeadLetter(ctx, got[0], "poison"); err != nil {
		t.Fatal(err)
	}
	dl, err := b.DeadLetters(ctx, 0)
	if err != nil || len(dl) != 1 || dl[0].Job.ID != "b2" || dl[0].Reason != "poison" || dl[0].Deliveries != 1 {
		t.Fatalf("DeadLetters = %+v, %v", dl, err)
	}
	if n, _ := b.Pending(ctx); n != 1 { // a, still leased
		t.Fatalf("Pending = %d, want 1", n)
	}
	if got, _ := b.Dequeue(ctx, 2, time.Minute, 300*time.Millisecond); len(got) != 0 {
		t.Fatalf("dequeued %v: a's renewed lease or the dead letter", ids(got))
	}
}

func TestJobRoundTrip(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	in := backend.Job{ID: "id-1", Run: "run-1", Workflow: "wf", Version: "v9", Kind: backend.Fallback,
		Node: "n[2]#3", From: "m", Attempt: 4, Priority: 7, NotBefore: time.Now().Add(-time.Second).Truncate(time.Microsecond), Err: "boom"}
	if err := b.Enqueue(ctx, in); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Dequeue(ctx, 1, time.Minute, 0)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Dequeue = %v, %v", ds, err)
	}
	out := ds[0].Job
	if !out.NotBefore.Equal(in.NotBefore) {
		t.Errorf("NotBefore = %v, want %v", out.NotBefore, in.NotBefore)
	}
	out.NotBefore = in.NotBefore
	if out != in {
		t.Errorf("job = %+v, want %+v", out, in)
	}
}

func TestDelayedJobWakesWaiter(t *testing.T) {
	ctx := ctxT(t)
	// A long poll interval: only the delayed job's own wake-up can end the wait early.
	b, u := open(t, WithPollInterval(time.Minute))
	other := openURL(t, u, WithPollInterval(time.Minute))
	j := job("later", 0)
	j.NotBefore = time.Now().Add(300 * time.Millisecond)

	done := make(chan []*backend.Delivery, 1)
	go func() {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- ds
	}()
	time.Sleep(100 * time.Millisecond) // b is waiting and listening
	start := time.Now()
	if err := other.Enqueue(ctx, j); err != nil {
		t.Fatal(err)
	}
	ds := <-done
	if len(ds) != 1 || ds[0].Job.ID != "later" {
		t.Fatalf("Dequeue = %v", ids(ds))
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("the delayed job arrived after %v, want about 300ms", d)
	}
}

func TestNotifyWakesOtherProcess(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t, WithPollInterval(time.Minute))
	other := openURL(t, u)
	done := make(chan time.Time, 1)
	go func() {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 20*time.Second)
		if err != nil || len(ds) != 1 {
			t.Errorf("Dequeue = %v, %v", ds, err)
		}
		done <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond)
	sent := time.Now()
	if err := other.Enqueue(ctx, job("a", 0)); err != nil {
		t.Fatal(err)
	}
	if d := (<-done).Sub(sent); d > time.Second {
		t.Errorf("the waiting Dequeue took %v to see a job enqueued by another process", d)
	}
}

func TestPollWithoutNotify(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t, WithNotify(false), WithPollInterval(50*time.Millisecond))
	other := openURL(t, u, WithNotify(false))
	done := make(chan []*backend.Delivery, 1)
	go func() {
		ds, _ := b.Dequeue(ctx, 1, time.Minute, 5*time.Second)
		done <- ds
	}()
	time.Sleep(100 * time.Millisecond)
	if err := other.Enqueue(ctx, job("a", 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case ds := <-done:
		if len(ds) != 1 {
			t.Fatalf("Dequeue = %v", ids(ds))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("polling Dequeue did not see the job")
	}
}

func TestDequeueTimeoutAndClose(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	start := time.Now()
	ds, err := b.Dequeue(ctx, 1, time.Minute, 200*time.Millisecond)
	if err != nil || len(ds) != 0 {
		t.Fatalf("Dequeue on an empty queue = %v, %v", ds, err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("Dequeue waited %v, want about 200ms", d)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := b.Dequeue(cctx, 1, time.Minute, 10*time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dequeue with a done ctx = %v, want DeadlineExceeded", err)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := b.Dequeue(ctx, 1, time.Minute, 20*time.Second)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, backend.ErrClosed) {
			t.Errorf("waiting Dequeue after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Dequeue")
	}
	if err := b.Enqueue(ctx, job("x", 0)); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Enqueue after Close = %v, want ErrClosed", err)
	}
	if _, _, err := b.Read(ctx, "r"); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Read after Close = %v, want ErrClosed", err)
	}
}

func newRun(id string) *backend.Run {
	now := time.Now()
	return &backend.Run{ID: id, Workflow: "wf", Version: "v1", Status: backend.Running, Input: []byte(`{"x":1}`),
		Metadata: map[string]string{"user": "u-1"}, Created: now, Updated: now}
}

func TestCreateRunReadUpdate(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	created, err := b.CreateRun(ctx, newRun("r1"), func(tx backend.Tx) error {
		if _, err := tx.PutIfAbsent("claim", nil); err != nil { // an empty value is present
			return err
		}
		if _, err := tx.Incr("open", 2); err != nil {
			return err
		}
		tx.Enqueue(backend.Job{ID: "j1", Run: "r1", Node: "a", Attempt: 1})
		return nil
	})
	if err != nil || !created {
		t.Fatalf("CreateRun = %v, %v", created, err)
	}
	// A second create changes nothing.
	created, err = b.CreateRun(ctx, newRun("r1"), func(tx backend.Tx) error {
		tx.Enqueue(backend.Job{ID: "j2", Run: "r1", Node: "a", Attempt: 1})
		return tx.Put("open", []byte("99"))
	})
	if err != nil || created {
		t.Fatalf("second CreateRun = %v, %v; want false", created, err)
	}
	r, vals, err := b.Read(ctx, "r1", "claim", "open", "absent")
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "r1" || r.Status != backend.Running || string(r.Input) != `{"x":1}` || r.Metadata["user"] != "u-1" || r.Result != nil {
		t.Errorf("run = %+v", r)
	}
	if v, ok := vals["claim"]; !ok || v == nil || len(v) != 0 {
		t.Errorf("claim = %q (present %v), want present and empty", v, ok)
	}
	if string(vals["open"]) != "2" {
		t.Errorf("open = %q, want 2", vals["open"])
	}
	if _, ok := vals["absent"]; ok || len(vals) != 2 {
		t.Errorf("vals = %q", vals)
	}
	if n, _ := b.Pending(ctx); n != 1 {
		t.Errorf("Pending = %d, want 1 (only the first create's job)", n)
	}

	// A failed transition leaves nothing behind.
	boom := errors.New("boom")
	err = b.Update(ctx, "r1", func(tx backend.Tx) error {
		tx.Put("x", []byte("1"))
		tx.Delete("claim")
		tx.Enqueue(backend.Job{ID: "j3", Run: "r1", Node: "b", Attempt: 1})
		tx.Run().Status = backend.Failed
		return boom
	})
	if err != boom {
		t.Fatalf("Update = %v, want fn's error as it is", err)
	}
	r2, vals, _ := b.Read(ctx, "r1", "x", "claim")
	if _, ok := vals["x"]; ok || vals["claim"] == nil || r2.Status != backend.Running {
		t.Errorf("after a failed transition: %+v %q", r2, vals)
	}
	if n, _ := b.Pending(ctx); n != 1 {
		t.Errorf("Pending = %d, want 1", n)
	}

	// A transition that completes the run.
	err = b.Update(ctx, "r1", func(tx backend.Tx) error {
		if got, _ := tx.Get("open", "claim", "absent"); string(got[0]) != "2" || got[1] == nil || got[2] != nil {
			return fmt.Errorf("Get = %q", got)
		}
		tx.Delete("claim")
		tx.Put("out", []byte("42"))
		run := tx.Run()
		run.Status, run.Result = backend.Completed, []byte("42")
		run.Metadata = nil
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r3, vals, _ := b.Read(ctx, "r1", "claim", "out")
	if r3.Status != backend.Completed || string(r3.Result) != "42" || r3.Metadata != nil || !r3.Updated.After(r.Updated) ||
		!r3.Created.Equal(r.Created) {
		t.Errorf("run = %+v (before: %+v)", r3, r)
	}
	if _, ok := vals["claim"]; ok || string(vals["out"]) != "42" {
		t.Errorf("vals = %q", vals)
	}

	if err := b.Update(ctx, "nope", func(backend.Tx) error { return nil }); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Update of a missing run = %v, want ErrNotFound", err)
	}
	if _, _, err := b.Read(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Read of a missing run = %v, want ErrNotFound", err)
	}
}

func TestUpdateIsAtomic(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t)
	other := openURL(t, u)
	if _, err := b.CreateRun(ctx, newRun("r"), nil); err != nil {
		t.Fatal(err)
	}
	// Concurrent transitions from two processes: increments and claims never get lost
	// or doubled.
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for g := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := b
			if g%2 == 1 {
				q = other
			}
			for i := range 10 {
				var claimed bool
				err := q.Update(ctx, "r", func(tx backend.Tx) error {
					if _, err := tx.Incr("n", 1); err != nil {
						return err
					}
					var err error
					claimed, err = tx.PutIfAbsent(fmt.Sprintf("claim-%d", i), []byte{byte(g)})
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				if claimed {
					mu.Lock()
					won++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	_, vals, err := b.Read(ctx, "r", "n")
	if err != nil || string(vals["n"]) != "120" {
		t.Errorf("n = %q, %v; want 120", vals["n"], err)
	}
	if won != 10 {
		t.Errorf("%d claims won, want 10", won)
	}
}

func TestListRuns(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	base := time.Now().Add(-time.Hour)
	for i, st := range []backend.Status{backend.Running, backend.Completed, backend.Running, backend.Failed} {
		r := newRun(fmt.Sprintf("r%d", i))
		r.Created = base.Add(time.Duration(i) * time.Minute)
		if i == 3 {
			r.Workflow = "other"
		}
		if _, err := b.CreateRun(ctx, r, func(tx backend.Tx) error { tx.Run().Status = st; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	list := func(f backend.RunFilter) string {
		rs, err := b.ListRuns(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, r := range rs {
			s = append(s, r.ID)
		}
		return strings.Join(s, ",")
	}
	for _, c := range []struct {
		f    backend.RunFilter
		want string
	}{
		{backend.RunFilter{}, "r3,r2,r1,r0"},
		{backend.RunFilter{Status: backend.Running}, "r2,r0"},
		{backend.RunFilter{Workflow: "other"}, "r3"},
		{backend.RunFilter{Limit: 2}, "r3,r2"},
		{backend.RunFilter{Status: backend.Running, UpdatedBefore: time.Now().Add(time.Minute)}, "r2,r0"},
		{backend.RunFilter{UpdatedBefore: base}, ""},
	} {
		if got := list(c.f); got != c.want {
			t.Errorf("ListRuns(%+v) = %s, want %s", c.f, got, c.want)
		}
	}
}

func TestWaitRun(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t, WithPollInterval(time.Minute))
	other := openURL(t, u)
	if _, err := b.CreateRun(ctx, newRun("r"), nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan *backend.Run, 1)
	go func() {
		r, err := b.WaitRun(ctx, "r")
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("WaitRun returned while the run was running")
	default:
	}
	sent := time.Now()
	if err := other.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Cancelled; return nil }); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r == nil || r.Status != backend.Cancelled {
			t.Errorf("WaitRun = %+v", r)
		}
		if d := time.Since(sent); d > time.Second {
			t.Errorf("WaitRun took %v to see the run finish in another process", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitRun did not return")
	}
	if _, err := b.WaitRun(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("WaitRun of a missing run = %v, want ErrNotFound", err)
	}
}

func TestExpireRuns(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	mk := func(id, parent string, st backend.Status) {
		r := newRun(id)
		r.Parent = parent
		if _, err := b.CreateRun(ctx, r, func(tx backend.Tx) error {
			tx.Run().Status = st
			return tx.Put("k", []byte("v"))
		}); err != nil {
			t.Fatal(err)
		}
	}
	mk("done", "", backend.Completed)
	mk("running", "", backend.Running)
	mk("child-of-running", "running", backend.Completed)
	mk("parent-done", "", backend.Failed)
	mk("child-of-done", "parent-done", backend.Completed)
	n, err := b.ExpireRuns(ctx, time.Now().Add(time.Minute))
	if err != nil || n != 3 {
		t.Fatalf("ExpireRuns = %d, %v; want 3", n, err)
	}
	for _, id := range []string{"running", "child-of-running"} {
		if _, _, err := b.Read(ctx, id); err != nil {
			t.Errorf("Read(%s) = %v", id, err)
		}
	}
	if _, _, err := b.Read(ctx, "done"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Read(done) = %v, want ErrNotFound", err)
	}
	var kv int
	b.Pool().QueryRow(ctx, `SELECT count(*) FROM run_kv`).Scan(&kv)
	if kv != 2 {
		t.Errorf("%d key-value rows left, want 2", kv)
	}
}

// redact hides the password of a URL.
func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return u
}

func TestStateCacheSeesOtherProcesses(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t)
	other := openURL(t, u)
	if _, err := b.CreateRun(ctx, newRun("r"), func(tx backend.Tx) error { return tx.Put("k", []byte("0")) }); err != nil {
		t.Fatal(err)
	}
	get := func(q *Backend) string {
		var v string
		err := q.Update(ctx, "r", func(tx backend.Tx) error {
			vs, err := tx.Get("k")
			v = string(vs[0])
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	put := func(q *Backend, v string) {
		if err := q.Update(ctx, "r", func(tx backend.Tx) error { return tx.Put("k", []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	// Each backend caches the state it wrote; a change by the other invalidates it.
	for i := 1; i <= 3; i++ {
		put(b, fmt.Sprint("b", i))
		if got := get(other); got != fmt.Sprint("b", i) {
			t.Fatalf("other read %q after b wrote b%d", got, i)
		}
		put(other, fmt.Sprint("o", i))
		if got := get(b); got != fmt.Sprint("o", i) {
			t.Fatalf("b read %q after other wrote o%d", got, i)
		}
	}
	// A failed transition leaves the cached state as it was.
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Put("k", []byte("lost")); return errors.New("no") }); err == nil {
		t.Fatal("Update did not return fn's error")
	}
	if got := get(b); got != "o3" {
		t.Fatalf("b read %q after a failed transition, want o3", got)
	}
}

func TestCreateRunWakesOtherProcess(t *testing.T) {
	ctx := ctxT(t)
	b, u := open(t, WithPollInterval(time.Minute))
	other := openURL(t, u)
	done := make(chan time.Time, 1)
	go func() {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 20*time.Second)
		if err != nil || len(ds) != 1 || ds[0].Job.ID != "start" {
			t.Errorf("Dequeue = %v, %v", ds, err)
		}
		done <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond)
	sent := time.Now()
	if _, err := other.CreateRun(ctx, newRun("r"), func(tx backend.Tx) error {
		tx.Enqueue(backend.Job{ID: "start", Run: "r", Node: "a", Attempt: 1})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := (<-done).Sub(sent); d > time.Second {
		t.Errorf("the waiting Dequeue took %v to see the job of a run created by another process", d)
	}
}

func TestStateCacheBounds(t *testing.T) {
	c := stateCache{m: map[string]*cachedState{}}
	c.put("a", 1, map[string][]byte{"k": []byte("vv")}, -1, []backend.Change{{Key: "x", Value: []byte("123")}, {Key: "k", Value: nil}})
	if rev, kv, size := c.get("a"); rev != 1 || len(kv) != 1 || string(kv["x"]) != "123" || size != 4 || c.bytes != 4 {
		t.Fatalf("get = %d %q %d (total %d)", rev, kv, size, c.bytes)
	}
	_, kv, size := c.get("a")
	c.put("a", 2, kv, size, []backend.Change{{Key: "x", Value: []byte("1")}})
	if _, _, size := c.get("a"); size != 2 || c.bytes != 2 {
		t.Fatalf("size = %d, total %d; want 2", size, c.bytes)
	}
	big := map[string][]byte{"k": make([]byte, maxCachedBytes/2)}
	c.put("big", 1, big, -1, nil)
	if rev, _, _ := c.get("big"); rev != -1 {
		t.Error("a state over a quarter of the budget was cached")
	}
	for i := range maxCachedRuns + 10 {
		c.put(fmt.Sprint("r", i), 1, map[string][]byte{}, 0, nil)
	}
	if len(c.m) > maxCachedRuns {
		t.Errorf("%d runs cached, want at most %d", len(c.m), maxCachedRuns)
	}
	c.drop("r1030")
	if rev, _, _ := c.get("r1030"); rev != -1 {
		t.Error("drop kept the run")
	}
}

func TestListenerReconnects(t *testing.T) {
	ctx := ctxT(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, u := open(t, WithPollInterval(time.Minute), WithLogger(quiet))
	other := openURL(t, u)
	// A first wait starts the listener.
	if _, err := b.Dequeue(ctx, 1, time.Minute, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var n int
	err := other.Pool().QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query = $1`, "LISTEN "+pgx.Identifier{b.channel}.Sanitize()).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminated %d listening connections, %v; want 1", n, err)
	}
	time.Sleep(500 * time.Millisecond) // it reconnects
	done := make(chan time.Time, 1)
	go func() {
		ds, err := b.Dequeue(ctx, 1, time.Minute, 20*time.Second)
		if err != nil || len(ds) != 1 {
			t.Errorf("Dequeue = %v, %v", ds, err)
		}
		done <- time.Now()
	}()
	time.Sleep(100 * time.Millisecond)
	sent := time.Now()
	if err := other.Enqueue(ctx, job("a", 0)); err != nil {
		t.Fatal(err)
	}
	if d := (<-done).Sub(sent); d > 2*time.Second {
		t.Errorf("after the listening connection was killed, a waiting Dequeue took %v to see a new job", d)
	}
}

func TestCounters(t *testing.T) {
	ctx := ctxT(t)
	b, _ := open(t)
	counters := func() map[string]float64 {
		c, err := b.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := b.CreateRun(ctx, newRun("r"), func(tx backend.Tx) error { return tx.Put("a", []byte("1")) }); err != nil {
		t.Fatal(err)
	}
	before := counters()
	for range 3 {
		if err := b.Update(ctx, "r", func(tx backend.Tx) error { _, err := tx.Incr("n", 1); return err }); err != nil {
			t.Fatal(err)
		}
	}
	after := counters()
	if d := after["pg_round_trips"] - before["pg_round_trips"]; d != 6 {
		t.Errorf("3 transitions took %v round trips, want 6", d)
	}
	if d := after["pg_statements"] - before["pg_statements"]; d != 15 {
		t.Errorf("3 transitions took %v statements, want 15", d)
	}
	if d := after["pg_kv_rows"] - before["pg_kv_rows"]; d != 0 {
		t.Errorf("3 transitions of a run this backend created loaded %v rows, want 0 (cached)", d)
	}
}
