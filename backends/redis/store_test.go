package redis

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

func createRun(t *testing.T, b *Backend, id string) {
	t.Helper()
	created, err := b.CreateRun(context.Background(), &backend.Run{ID: id, Workflow: "wf", Status: backend.Running, Created: time.Now()},
		func(tx backend.Tx) error { return tx.Put("open", []byte("1")) })
	if err != nil || !created {
		t.Fatalf("create run %s: %v, %v", id, created, err)
	}
}

// Many goroutines in several "processes" (backends on one prefix) complete into one
// join at once: every arrival is recorded once, and the join fires exactly once.
func TestConcurrentJoinExactlyOnce(t *testing.T) {
	ctx := context.Background()
	u := testURL(t)
	var bs []*Backend
	for range 3 {
		bs = append(bs, openT(t, u))
	}
	createRun(t, bs[0], "r")
	const preds = 60
	var wg sync.WaitGroup
	var mu sync.Mutex
	fired := 0
	for i := range preds {
		for dup := range 2 { // every arrival delivered twice, to two processes
			wg.Add(1)
			go func(b *Backend) {
				defer wg.Done()
				iFired := false
				err := b.Update(ctx, "r", func(tx backend.Tx) error {
					iFired = false
					added, err := tx.PutIfAbsent("a|join|"+strconv.Itoa(i), []byte{'1'})
					if err != nil || !added {
						return err
					}
					n, err := tx.Incr("arrived", 1)
					if err != nil || n < preds {
						return err
					}
					if won, err := tx.PutIfAbsent("c|join", nil); err != nil || !won {
						return err
					}
					iFired = true
					tx.Enqueue(backend.Job{ID: "join", Run: "r", Node: "join"})
					return nil
				})
				if err != nil {
					t.Errorf("update: %v", err)
				}
				if iFired {
					mu.Lock()
					fired++
					mu.Unlock()
				}
			}(bs[(i+dup)%len(bs)])
		}
	}
	wg.Wait()
	if fired != 1 {
		t.Fatalf("the join fired %d times", fired)
	}
	_, vals, err := bs[1].Read(ctx, "r", "arrived", "c|join")
	if err != nil {
		t.Fatal(err)
	}
	if string(vals["arrived"]) != strconv.Itoa(preds) || vals["c|join"] == nil {
		t.Fatalf("state: %q", vals)
	}
	if ds := dequeue(t, bs[2], 10, time.Minute); jobIDs(ds) != "join" {
		t.Fatalf("queue holds %q, want the join once", jobIDs(ds))
	}
}

// A transition whose knowledge is stale (another process changed what it read) is run
// again on the current values; one that read nothing stale commits at once.
func TestStaleKnowledgeRetries(t *testing.T) {
	ctx := context.Background()
	u := testURL(t)
	a, b := openT(t, u), openT(t, u)
	createRun(t, a, "r")
	incr := func(bk *Backend) int64 {
		var n int64
		if err := bk.Update(ctx, "r", func(tx backend.Tx) error {
			var err error
			n, err = tx.Incr("open", 1)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := incr(a); n != 2 {
		t.Fatalf("open = %d, want 2", n)
	}
	if n := incr(b); n != 3 { // b knew nothing: it guessed, was told, ran again
		t.Fatalf("open = %d, want 3", n)
	}
	if n := incr(a); n != 4 { // a's knowledge (2) is stale
		t.Fatalf("open = %d, want 4", n)
	}
	// A failing transition is checked too: its error may come from stale knowledge.
	err := b.Update(ctx, "r", func(tx backend.Tx) error {
		v, _ := tx.Get("open")
		if string(v[0]) != "4" {
			return fmt.Errorf("saw open = %s", v[0])
		}
		return errors.New("fine")
	})
	if err == nil || err.Error() != "fine" {
		t.Fatalf("err = %v, want the transition's own error on current values", err)
	}
}

// Updates of one run within a process are committed together: their effects all land,
// in one script call per batch.
func TestBatchedUpdatesOfOneRun(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	createRun(t, b, "r")
	before := b.pipe.calls.Load()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := b.Update(ctx, "r", func(tx backend.Tx) error {
				if i%10 == 0 {
					_ = tx.Put("doomed", []byte("x"))
					return errors.New("fails alone")
				}
				_, err := tx.Incr("n", 1)
				return err
			})
			if (err != nil) != (i%10 == 0) {
				t.Errorf("update %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	_, vals, _ := b.Read(ctx, "r", "n", "doomed")
	if string(vals["n"]) != "180" || vals["doomed"] != nil {
		t.Fatalf("state = %q, want n=180 and nothing of the failed transitions", vals)
	}
	calls := b.pipe.calls.Load() - before
	t.Logf("200 concurrent updates of one run: %d calls to Redis", calls)
	if calls >= 200 {
		t.Errorf("%d calls for 200 updates: not batched", calls)
	}
}

// A finished run expires ttl after it ends; a running one never; ttl=0 keeps them.
func TestFinishedRunsExpire(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t, "ttl=1s")
	createRun(t, b, "done")
	createRun(t, b, "running")
	if err := b.Update(ctx, "done", func(tx backend.Tx) error {
		tx.Run().Status = backend.Completed
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ttl := b.rdb.PTTL(ctx, b.k.run("done")).Val()
	if ttl <= 0 || ttl > time.Second {
		t.Fatalf("TTL of the finished run = %v, want 1s", ttl)
	}
	if ttl := b.rdb.PTTL(ctx, b.k.run("running")).Val(); ttl != -1 {
		t.Fatalf("TTL of the running run = %v, want none", ttl)
	}
	time.Sleep(1200 * time.Millisecond)
	if _, _, err := b.Read(ctx, "done", "open"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("read of the expired run: %v, want ErrNotFound", err)
	}
	rs, err := b.ListRuns(ctx, backend.RunFilter{})
	if err != nil || len(rs) != 1 || rs[0].ID != "running" {
		t.Fatalf("ListRuns = %v, %v; want only the running run", rs, err)
	}

	keep := newBackend(t, "ttl=0")
	createRun(t, keep, "r")
	if err := keep.Update(ctx, "r", func(tx backend.Tx) error {
		tx.Run().Status = backend.Failed
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ttl := keep.rdb.PTTL(ctx, keep.k.run("r")).Val(); ttl != -1 {
		t.Fatalf("ttl=0: TTL = %v, want none", ttl)
	}
	// A rerun makes a finished run permanent again.
	if err := b.Update(ctx, "running", func(tx backend.Tx) error {
		tx.Run().Status = backend.Cancelled
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(ctx, "running", func(tx backend.Tx) error {
		tx.Run().Status = backend.Running
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ttl := b.rdb.PTTL(ctx, b.k.run("running")).Val(); ttl != -1 {
		t.Fatalf("TTL after a rerun = %v, want none", ttl)
	}
}

// Backends with different prefixes on one Redis see nothing of each other.
func TestPrefixIsolation(t *testing.T) {
	ctx := context.Background()
	a, b := newBackend(t), newBackend(t)
	createRun(t, a, "r")
	if err := a.Enqueue(ctx, testJob("j", 0)); err != nil {
		t.Fatal(err)
	}
	if ds := dequeue(t, b, 10, time.Minute); len(ds) != 0 {
		t.Fatalf("another prefix dequeued %q", jobIDs(ds))
	}
	if _, _, err := b.Read(ctx, "r"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("another prefix read the run: %v", err)
	}
	if rs, _ := b.ListRuns(ctx, backend.RunFilter{}); len(rs) != 0 {
		t.Fatalf("another prefix lists %d runs", len(rs))
	}
	createRun(t, b, "r") // the same id, its own run
	if ds := dequeue(t, a, 10, time.Minute); jobIDs(ds) != "j" {
		t.Fatalf("got %q", jobIDs(ds))
	}
}

// The reconciler's query reads the progress index, never KEYS or SCAN.
func TestListStalledRunsFromIndex(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	createRun(t, b, "old")
	time.Sleep(1100 * time.Millisecond)
	cutoff := time.Now()
	createRun(t, b, "new")
	before := commandCalls(t, b)
	rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running, UpdatedBefore: cutoff})
	if err != nil || len(rs) != 1 || rs[0].ID != "old" {
		t.Fatalf("stalled runs = %v, %v; want old", rs, err)
	}
	after := commandCalls(t, b)
	for _, c := range []string{"keys", "scan"} {
		if after[c] != before[c] {
			t.Errorf("ListRuns used %s", c)
		}
	}
	// Progress moves a run out of the stalled list.
	if err := b.Update(ctx, "old", func(tx backend.Tx) error { return tx.Put("x", []byte("1")) }); err != nil {
		t.Fatal(err)
	}
	if rs, _ := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running, UpdatedBefore: cutoff}); len(rs) != 0 {
		t.Fatalf("after progress: %v", rs)
	}
}

// commandCalls reads INFO commandstats: calls by command.
func commandCalls(t *testing.T, b *Backend) map[string]int {
	t.Helper()
	info, err := b.rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		cmd, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		var calls int
		if _, err := fmt.Sscanf(rest, "calls=%d", &calls); err == nil {
			out[cmd] = calls
		}
	}
	return out
}

func TestOptions(t *testing.T) {
	u, _ := url.Parse("redis://h:1/2?prefix=p:&ttl=90&poll=250ms&maxdeliveries=0&maxvalue=10&pool_size=3")
	o, ca, _, err := parseOptions(u)
	if err != nil {
		t.Fatal(err)
	}
	if o.Prefix != "p:" || o.TTL != 90*time.Second || o.Poll != 250*time.Millisecond || o.MaxDeliveries != -1 || o.MaxValue != 10 || ca != "" {
		t.Fatalf("options: %+v", o)
	}
	if u.RawQuery != "pool_size=3" {
		t.Fatalf("left for go-redis: %q", u.RawQuery)
	}
	u, _ = url.Parse("redis://h/0?ttl=0")
	if o, _, _, _ := parseOptions(u); o.TTL >= 0 {
		t.Fatalf("ttl=0 gives %v, want negative (keep)", o.TTL)
	}
	for _, bad := range []string{"ttl=soon", "poll=-1s", "maxdeliveries=x", "prefix="} {
		u, _ := url.Parse("redis://h/0?" + bad)
		if _, _, _, err := parseOptions(u); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	for _, p := range []string{"a{b", "a}b", "{}:", "{a}{b}:", "{a}}"} {
		if err := checkPrefix(p, false); err == nil {
			t.Errorf("prefix %q was accepted", p)
		}
	}
	for _, p := range []string{"a:", "{a}:", "x{a}:"} {
		if err := checkPrefix(p, false); err != nil {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
	if err := checkPrefix("a:", true); err == nil {
		t.Error("a cluster prefix without a hash tag was accepted")
	}
	u, _ = url.Parse("redis://h:1?addr=h:2&cluster=true")
	if _, _, cluster, err := parseOptions(u); err != nil || !cluster || u.RawQuery != "addr=h%3A2" {
		t.Errorf("cluster URL: cluster=%v, err=%v, left %q", cluster, err, u.RawQuery)
	}
}

func TestCounters(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	c0, err := b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	createRun(t, b, "r")
	if _, _, err := b.Read(ctx, "r", "open"); err != nil {
		t.Fatal(err)
	}
	c1, err := b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"redis_cmds", "redis_round_trips", "redis_calls"} {
		if c1[k] <= c0[k] {
			t.Errorf("%s did not grow: %v -> %v", k, c0[k], c1[k])
		}
	}
}
