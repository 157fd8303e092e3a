package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// open returns a fresh backend on a file in t.TempDir(), and its path.
func open(t testing.TB, opts ...Option) (*Backend, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flow.db")
	b, err := New(context.Background(), path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, path
}

// reopen opens another backend on path, as another process would.
func reopen(t *testing.T, path string) *Backend {
	t.Helper()
	b, err := New(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func createRun(t *testing.T, b *Backend, id string) {
	t.Helper()
	r := &backend.Run{ID: id, Workflow: "wf", Version: "v1", Status: backend.Running}
	if created, err := b.CreateRun(context.Background(), r, nil); err != nil || !created {
		t.Fatalf("CreateRun(%s) = %v, %v", id, created, err)
	}
}

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		url, path string
		want      options
	}{
		{"sqlite://flow.db", "flow.db", defaultOptions()},
		{"sqlite://path/to/flow.db", "path/to/flow.db", defaultOptions()},
		{"sqlite://./flow.db", "./flow.db", defaultOptions()},
		{"sqlite:///abs/path.db", "/abs/path.db", defaultOptions()},
		{"sqlite:flow.db", "flow.db", defaultOptions()},
		{"sqlite://flow.db?busy_timeout=2s&synchronous=full&max_conns=3&ttl=24h", "flow.db",
			options{busyTimeout: 2 * time.Second, synchronous: "FULL", maxConns: 3, ttl: 24 * time.Hour}},
		{"sqlite://flow.db?busy_timeout=250", "flow.db",
			options{busyTimeout: 250 * time.Millisecond, synchronous: "NORMAL", maxConns: 8}},
	} {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		path, opts, err := parseURL(u)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		o := defaultOptions()
		for _, opt := range opts {
			opt(&o)
		}
		if path != c.path || o != c.want {
			t.Errorf("%s: got %q %+v, want %q %+v", c.url, path, o, c.path, c.want)
		}
	}
	for _, bad := range []string{"sqlite://", "sqlite://f.db?busy_timeout=x", "sqlite://f.db?synchronous=maybe",
		"sqlite://f.db?max_conns=0", "sqlite://f.db?ttl=soon", "sqlite://f.db?journal=wal"} {
		u, _ := url.Parse(bad)
		if _, _, err := parseURL(u); err == nil {
			t.Errorf("%s: no error", bad)
		} else if !strings.HasPrefix(err.Error(), "sqlite: ") {
			t.Errorf("%s: error %q does not say where it comes from", bad, err)
		}
	}
}

// TestConcurrentOpen opens a new file from several Backends at once, as worker
// processes starting together do: the schema is created once, and every open succeeds.
func TestConcurrentOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flow.db")
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := New(context.Background(), path)
			if err == nil {
				err = b.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	b := reopen(t, path)
	var n int
	if err := b.db.QueryRow(`SELECT count(*) FROM schema_version`).Scan(&n); err != nil || n != SchemaVersion() {
		t.Errorf("%d migrations recorded (%v), want %d", n, err, SchemaVersion())
	}
}

func TestOpenByURL(t *testing.T) {
	dir := t.TempDir()
	b, err := backend.Open(context.Background(), "sqlite://"+filepath.Join(dir, "a.db")+"?busy_timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.(*Backend).Path(); got != filepath.Join(dir, "a.db") {
		t.Errorf("path %q", got)
	}
	var mode string
	if err := b.(*Backend).DB().QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal mode %q, %v; want wal", mode, err)
	}
}

func TestMigrations(t *testing.T) {
	ms, err := loadMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || SchemaVersion() != len(ms) {
		t.Fatalf("%d migrations, SchemaVersion %d", len(ms), SchemaVersion())
	}
	for _, bad := range []fstest.MapFS{
		{"migrations/0001_a.sql": {}, "migrations/0003_c.sql": {}},
		{"migrations/0001_a.sql": {}, "migrations/0001_b.sql": {}},
		{"migrations/init.sql": {}},
	} {
		if _, err := loadMigrations(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}

	// An upgrade applies the new migrations once, in order.
	b, path := open(t)
	next := append(ms, migration{version: len(ms) + 1, name: "9999_extra.sql", sql: `CREATE TABLE extra (x INTEGER);`})
	for range 2 {
		if err := b.applyMigrations(context.Background(), next); err != nil {
			t.Fatal(err)
		}
	}
	var v, n int
	if err := b.db.QueryRow(`SELECT max(version), count(*) FROM schema_version`).Scan(&v, &n); err != nil {
		t.Fatal(err)
	}
	if v != len(next) || n != len(next) {
		t.Errorf("schema_version max %d count %d, want %d", v, n, len(next))
	}
	b.Close()

	// This binary refuses the file now: it is newer.
	_, err = New(context.Background(), path)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("open of a newer file: %v, want ErrSchemaTooNew", err)
	}
	if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, fmt.Sprintf("schema version %d", len(next))) {
		t.Errorf("error %q does not name the file and its version", msg)
	}
}

func TestEmptyValues(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	createRun(t, b, "r")
	if err := b.Update(ctx, "r", func(tx backend.Tx) error {
		if err := tx.Put("empty", nil); err != nil {
			return err
		}
		return tx.Put("also", []byte{})
	}); err != nil {
		t.Fatal(err)
	}
	err := b.Update(ctx, "r", func(tx backend.Tx) error {
		for _, k := range []string{"empty", "also"} {
			if stored, err := tx.PutIfAbsent(k, []byte("x")); err != nil || stored {
				return fmt.Errorf("PutIfAbsent(%s) over an empty value = %v, %v", k, stored, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, vals, err := b.Read(ctx, "r", "empty", "also", "absent")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := vals["empty"]; !ok || v == nil || len(v) != 0 {
		t.Errorf("empty value read as %v, %v", v, ok)
	}
	if _, ok := vals["absent"]; ok || len(vals) != 2 {
		t.Errorf("values %q", vals)
	}
}

func TestUpdateAtomic(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	createRun(t, b, "r")
	boom := errors.New("boom")
	err := b.Update(ctx, "r", func(tx backend.Tx) error {
		tx.Run().Status = backend.Failed
		tx.Put("k", []byte("v"))
		tx.Incr("n", 5)
		tx.Enqueue(backend.Job{ID: "j", Run: "r"})
		return boom
	})
	if err != boom {
		t.Fatalf("Update returned %v, want fn's error as is", err)
	}
	r, vals, err := b.Read(ctx, "r", "k", "n")
	if err != nil || r.Status != backend.Running || len(vals) != 0 {
		t.Errorf("after a failed Update: %+v %q %v", r, vals, err)
	}
	if n, _ := b.Pending(ctx); n != 0 {
		t.Errorf("%d jobs enqueued by a failed Update", n)
	}
	if err := b.Update(ctx, "nope", func(backend.Tx) error { return nil }); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Update of a missing run: %v", err)
	}
}

func TestStaleLease(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	if err := b.Enqueue(ctx, backend.Job{ID: "j1", Run: "r", Node: "a", Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	first, err := b.Dequeue(ctx, 1, 50*time.Millisecond, time.Second)
	if err != nil || len(first) != 1 || first[0].Deliveries != 1 {
		t.Fatalf("first Dequeue = %v, %v", first, err)
	}
	second, err := b.Dequeue(ctx, 1, time.Minute, 2*time.Second)
	if err != nil || len(second) != 1 || second[0].Deliveries != 2 || second[0].Job.ID != "j1" {
		t.Fatalf("Dequeue after the lease expired = %v, %v", second, err)
	}
	// The stale holder changes nothing.
	stale := first[0]
	if err := b.Extend(ctx, time.Hour, stale); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if err := b.Requeue(ctx, stale, backend.Job{ID: "j2", Run: "r"}); err != nil {
		t.Fatal(err)
	}
	if err := b.DeadLetter(ctx, stale, "stale"); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.Pending(ctx); n != 1 {
		t.Fatalf("%d jobs pending after a stale holder's calls, want 1", n)
	}
	if dead, _ := b.DeadLetters(ctx); len(dead) != 0 {
		t.Fatalf("stale DeadLetter moved %v aside", dead)
	}
	// The current holder's lease was not extended by the stale Extend: Extend it
	// shortly and see the job come back.
	if err := b.Extend(ctx, 30*time.Millisecond, second[0]); err != nil {
		t.Fatal(err)
	}
	third, err := b.Dequeue(ctx, 1, time.Minute, 2*time.Second)
	if err != nil || len(third) != 1 || third[0].Deliveries != 3 {
		t.Fatalf("Dequeue after the extended lease expired = %v, %v", third, err)
	}
	if err := b.DeadLetter(ctx, third[0], "poison"); err != nil {
		t.Fatal(err)
	}
	dead, err := b.DeadLetters(ctx)
	if err != nil || len(dead) != 1 || dead[0].Reason != "poison" || dead[0].Job.ID != "j1" || dead[0].Deliveries != 3 {
		t.Fatalf("dead letters %+v, %v", dead, err)
	}
	if ds, _ := b.Dequeue(ctx, 1, time.Minute, 10*time.Millisecond); len(ds) != 0 {
		t.Fatalf("a dead letter was delivered: %v", ds)
	}
}

func TestRequeueResetsDeliveries(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	b.Enqueue(ctx, backend.Job{ID: "j1", Run: "r", Attempt: 1})
	ds, _ := b.Dequeue(ctx, 1, time.Minute, time.Second)
	next := ds[0].Job
	next.ID, next.Attempt = "j2", 2
	if err := b.Requeue(ctx, ds[0], next); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, ds[0]); err != nil { // the old lease is gone with its row
		t.Fatal(err)
	}
	got, err := b.Dequeue(ctx, 1, time.Minute, time.Second)
	if err != nil || len(got) != 1 || got[0].Job.ID != "j2" || got[0].Job.Attempt != 2 || got[0].Deliveries != 1 {
		t.Fatalf("after Requeue: %+v, %v", got, err)
	}
}

func TestQueueOrder(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	now := time.Now()
	jobs := []backend.Job{
		{ID: "low1", Priority: 0}, {ID: "high1", Priority: 5}, {ID: "low2", Priority: 0},
		{ID: "high2", Priority: 5}, {ID: "later", Priority: 9, NotBefore: now.Add(150 * time.Millisecond)},
	}
	if err := b.Enqueue(ctx, jobs...); err != nil {
		t.Fatal(err)
	}
	ds, err := b.Dequeue(ctx, 10, time.Minute, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.Job.ID)
	}
	if got := strings.Join(ids, " "); got != "high1 high2 low1 low2" {
		t.Errorf("order %q", got)
	}
	start := time.Now()
	ds, err = b.Dequeue(ctx, 10, time.Minute, 2*time.Second)
	if err != nil || len(ds) != 1 || ds[0].Job.ID != "later" {
		t.Fatalf("delayed job: %v, %v", ds, err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("delayed job seen after %v", waited)
	}
	if !ds[0].Job.NotBefore.Equal(jobs[4].NotBefore) {
		t.Errorf("NotBefore %v, want %v", ds[0].Job.NotBefore, jobs[4].NotBefore)
	}
}

func TestDequeueWakesOnLocalEnqueue(t *testing.T) {
	b, _ := open(t)
	b.pollMin, b.pollMax = time.Hour, time.Hour // no polling: only the enqueue can wake it
	ctx := context.Background()
	go func() {
		time.Sleep(100 * time.Millisecond)
		b.Enqueue(ctx, backend.Job{ID: "j"})
	}()
	start := time.Now()
	ds, err := b.Dequeue(ctx, 1, time.Minute, 10*time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Dequeue = %v, %v", ds, err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("woke after %v: the enqueue did not wake it", waited)
	}
	// Timeout: no jobs, no error.
	start = time.Now()
	ds, err = b.Dequeue(ctx, 1, time.Minute, 100*time.Millisecond)
	if err != nil || len(ds) != 0 || time.Since(start) < 100*time.Millisecond {
		t.Errorf("empty Dequeue = %v, %v after %v", ds, err, time.Since(start))
	}
	// Cancellation.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.Dequeue(cctx, 1, time.Minute, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled Dequeue: %v", err)
	}
}

// TestDequeuePollsOtherProcesses enqueues through another Backend on the file: the
// waiting Dequeue finds the job by polling.
func TestDequeuePollsOtherProcesses(t *testing.T) {
	b, path := open(t)
	other := reopen(t, path)
	ctx := context.Background()
	go func() {
		time.Sleep(100 * time.Millisecond)
		other.Enqueue(ctx, backend.Job{ID: "j"})
	}()
	ds, err := b.Dequeue(ctx, 1, time.Minute, 10*time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Dequeue = %v, %v", ds, err)
	}
}

func TestClose(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() {
		_, err := b.Dequeue(ctx, 1, time.Minute, time.Hour)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, backend.ErrClosed) {
			t.Errorf("blocked Dequeue returned %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not release a blocked Dequeue")
	}
	if err := b.Enqueue(ctx, backend.Job{ID: "j"}); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Enqueue after Close: %v", err)
	}
	if _, _, err := b.Read(ctx, "r"); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCreateRunIdempotent(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	created := time.Now().Add(-time.Hour)
	r := &backend.Run{ID: "r", Workflow: "wf", Version: "v1", Status: backend.Running, Priority: 3,
		Input: []byte(`{"a":1}`), Metadata: map[string]string{"k": "v"}, Created: created}
	init := func(tx backend.Tx) error {
		tx.Put("started", []byte("1"))
		tx.Enqueue(backend.Job{ID: "start", Run: "r"})
		return nil
	}
	for i, want := range []bool{true, false} {
		got, err := b.CreateRun(ctx, r, init)
		if err != nil || got != want {
			t.Fatalf("CreateRun #%d = %v, %v; want %v", i+1, got, err, want)
		}
	}
	if n, _ := b.Pending(ctx); n != 1 {
		t.Errorf("%d jobs, want 1", n)
	}
	got, vals, err := b.Read(ctx, "r", "started")
	if err != nil {
		t.Fatal(err)
	}
	if got.Workflow != "wf" || got.Priority != 3 || string(got.Input) != `{"a":1}` || got.Metadata["k"] != "v" ||
		!got.Created.Equal(created) || got.Updated.Before(created) || string(vals["started"]) != "1" {
		t.Errorf("read back %+v %q", got, vals)
	}
	// A failing init creates nothing.
	if _, err := b.CreateRun(ctx, &backend.Run{ID: "bad"}, func(backend.Tx) error { return errors.New("no") }); err == nil {
		t.Fatal("CreateRun with a failing init returned no error")
	}
	if _, _, err := b.Read(ctx, "bad"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("run of a failed CreateRun: %v", err)
	}
}

func TestListRuns(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	base := time.Now().Add(-time.Hour)
	for i, wf := range []string{"a", "b", "a", "b"} {
		r := &backend.Run{ID: fmt.Sprintf("r%d", i), Workflow: wf, Status: backend.Running, Created: base.Add(time.Duration(i) * time.Minute)}
		b.CreateRun(ctx, r, nil)
	}
	b.Update(ctx, "r1", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil })
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	b.Update(ctx, "r3", func(tx backend.Tx) error { return nil })
	ids := func(f backend.RunFilter) string {
		rs, err := b.ListRuns(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, r := range rs {
			s = append(s, r.ID)
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		f    backend.RunFilter
		want string
	}{
		{backend.RunFilter{}, "r3 r2 r1 r0"},
		{backend.RunFilter{Limit: 2}, "r3 r2"},
		{backend.RunFilter{Workflow: "a"}, "r2 r0"},
		{backend.RunFilter{Status: backend.Running}, "r3 r2 r0"},
		{backend.RunFilter{Status: backend.Completed}, "r1"},
		{backend.RunFilter{Status: backend.Running, UpdatedBefore: mid}, "r2 r0"},
		{backend.RunFilter{Status: backend.Running, Workflow: "b", UpdatedBefore: mid}, ""},
	} {
		if got := ids(c.f); got != c.want {
			t.Errorf("%+v: %q, want %q", c.f, got, c.want)
		}
	}
}

func TestExpireRuns(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	for _, id := range []string{"done", "running", "parent", "parent/child", "orphan/child"} {
		createRun(t, b, id)
	}
	setParent := func(id, parent string) {
		b.db.Exec(`UPDATE runs SET parent = ? WHERE id = ?`, parent, id)
	}
	setParent("parent/child", "parent")
	setParent("orphan/child", "gone")
	for _, id := range []string{"done", "parent/child", "orphan/child"} {
		b.Update(ctx, id, func(tx backend.Tx) error {
			tx.Run().Status = backend.Completed
			return tx.Put("k", []byte("v"))
		})
	}
	n, err := b.ExpireRuns(ctx, time.Now())
	if err != nil || n != 2 {
		t.Fatalf("ExpireRuns = %d, %v; want 2", n, err)
	}
	for id, want := range map[string]bool{"done": false, "orphan/child": false, "running": true, "parent": true, "parent/child": true} {
		if _, _, err := b.Read(ctx, id); (err == nil) != want {
			t.Errorf("%s: kept %v, want %v", id, err == nil, want)
		}
	}
	var kv int
	b.db.QueryRow(`SELECT count(*) FROM run_kv WHERE run IN ('done', 'orphan/child')`).Scan(&kv)
	if kv != 0 {
		t.Errorf("%d values of expired runs left", kv)
	}
}

func TestTTL(t *testing.T) {
	b, _ := open(t, WithTTL(time.Millisecond))
	ctx := context.Background()
	createRun(t, b, "r")
	b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Cancelled; return nil })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, err := b.Read(ctx, "r"); errors.Is(err, backend.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the finished run was not expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWaitRun(t *testing.T) {
	b, path := open(t)
	other := reopen(t, path)
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		finish *Backend
	}{{"same backend", b}, {"other backend", other}} {
		t.Run(c.name, func(t *testing.T) {
			id := "run-" + c.finish.path + c.name
			createRun(t, b, id)
			go func() {
				time.Sleep(50 * time.Millisecond)
				c.finish.Update(ctx, id, func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil })
			}()
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			r, err := b.WaitRun(wctx, id)
			if err != nil || r.Status != backend.Completed {
				t.Fatalf("WaitRun = %+v, %v", r, err)
			}
		})
	}
	if _, err := b.WaitRun(ctx, "missing"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("WaitRun of a missing run: %v", err)
	}
	createRun(t, b, "forever")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := b.WaitRun(cctx, "forever"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled WaitRun: %v", err)
	}
	b.mu.Lock()
	left := len(b.waiters)
	b.mu.Unlock()
	if left != 0 {
		t.Errorf("%d waiter entries left", left)
	}
}

// TestTwoBackendsOneFile uses two Backends on one file as two processes would: every
// job is delivered once, and concurrent transitions of one run all count.
func TestTwoBackendsOneFile(t *testing.T) {
	a, path := open(t)
	b := reopen(t, path)
	ctx := context.Background()
	createRun(t, a, "r")
	const jobs = 200
	for i := range jobs {
		if err := a.Enqueue(ctx, backend.Job{ID: fmt.Sprint(i), Run: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for _, be := range []*Backend{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := be.Dequeue(ctx, 3, time.Minute, 100*time.Millisecond)
				if err != nil {
					errc <- err
					return
				}
				if len(ds) == 0 {
					return
				}
				for _, d := range ds {
					err := be.Update(ctx, "r", func(tx backend.Tx) error {
						if fresh, err := tx.PutIfAbsent("done/"+d.Job.ID, nil); err != nil || !fresh {
							return fmt.Errorf("job %s delivered twice (%v)", d.Job.ID, err)
						}
						_, err := tx.Incr("count", 1)
						return err
					})
					if err == nil {
						err = be.Ack(ctx, d)
					}
					if err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	_, vals, err := b.Read(ctx, "r", "count")
	if err != nil || string(vals["count"]) != fmt.Sprint(jobs) {
		t.Errorf("count %q, %v; want %d", vals["count"], err, jobs)
	}
	if n, _ := a.Pending(ctx); n != 0 {
		t.Errorf("%d jobs left", n)
	}
}

// queued waits until n writes wait in b's queue.
func queued(t *testing.T, b *Backend, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.qmu.Lock()
		got := len(b.queue)
		b.qmu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGroupCommit queues writes while the write connection is busy, so that they run
// as one group: one fails with an SQL error after writing, one with its own error; the
// others take effect once each, and the failures change nothing.
func TestGroupCommit(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	createRun(t, b, "r")
	b.writeSem <- struct{}{} // hold the write connection
	var wg sync.WaitGroup
	errs := make([]error, 7)
	run := func(i int, f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f() }()
		queued(t, b, i+1)
	}
	incr := func() error {
		return b.Update(ctx, "r", func(tx backend.Tx) error { _, err := tx.Incr("n", 1); return err })
	}
	mine := errors.New("mine")
	run(0, incr)
	run(1, incr)
	run(2, func() error {
		return b.write(ctx, "bad write", func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO run_kv (run, key, value) VALUES ('r', 'bad', 'x')`); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO no_such_table VALUES (1)`)
			return err
		})
	})
	run(3, incr)
	run(4, func() error {
		return b.Update(ctx, "r", func(tx backend.Tx) error {
			tx.Incr("n", 100)
			tx.Enqueue(backend.Job{ID: "never"})
			return mine
		})
	})
	run(5, incr)
	run(6, func() error { return b.Update(ctx, "missing", func(backend.Tx) error { return nil }) })
	<-b.writeSem
	wg.Wait()
	for i, err := range errs {
		switch i {
		case 2:
			if err == nil || !strings.Contains(err.Error(), "sqlite: bad write in ") {
				t.Errorf("failing write: %v", err)
			}
		case 4:
			if err != mine {
				t.Errorf("failing transition: %v, want its own error as is", err)
			}
		case 6:
			if !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("missing run: %v", err)
			}
		default:
			if err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		}
	}
	_, vals, err := b.Read(ctx, "r", "n", "bad")
	if err != nil || string(vals["n"]) != "4" || vals["bad"] != nil {
		t.Errorf("state %q, %v; want n=4 and no bad", vals, err)
	}
	if n, _ := b.Pending(ctx); n != 0 {
		t.Errorf("%d jobs enqueued by failed transitions", n)
	}
}

// TestWriteCancelledWhileQueued cancels a write waiting for the write connection: it
// returns the context's error and never takes effect.
func TestWriteCancelledWhileQueued(t *testing.T) {
	b, _ := open(t)
	createRun(t, b, "r")
	b.writeSem <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- b.Update(ctx, "r", func(tx backend.Tx) error { return tx.Put("k", []byte("v")) })
	}()
	queued(t, b, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Update: %v", err)
	}
	queued(t, b, 0)
	<-b.writeSem
	if _, vals, _ := b.Read(context.Background(), "r", "k"); vals["k"] != nil {
		t.Error("a cancelled Update took effect")
	}
}

// TestPanicInTransition panics in a transition that runs in a group with others: the
// panic reaches the caller of that Update, the others take effect, and the backend goes
// on working.
func TestPanicInTransition(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	createRun(t, b, "r")
	b.writeSem <- struct{}{}
	var wg sync.WaitGroup
	recovered := make([]any, 3)
	errs := make([]error, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { recovered[i] = recover() }()
			errs[i] = b.Update(ctx, "r", func(tx backend.Tx) error {
				if i == 1 {
					panic("boom")
				}
				_, err := tx.Incr("n", 1)
				return err
			})
		}()
		queued(t, b, i+1)
	}
	<-b.writeSem
	wg.Wait()
	if recovered[0] != nil || recovered[1] != "boom" || recovered[2] != nil {
		t.Errorf("recovered %v, want the transition's panic in its caller only", recovered)
	}
	if errs[0] != nil || errs[2] != nil {
		t.Errorf("errors %v", errs)
	}
	_, vals, err := b.Read(ctx, "r", "n")
	if err != nil || string(vals["n"]) != "2" {
		t.Errorf("n = %q, %v; want 2", vals["n"], err)
	}
}
