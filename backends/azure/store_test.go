package azure

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/flowgen/flowgen/runtime/backend"
)

func createRun(t *testing.T, b *Backend, id string, init func(backend.Tx) error) {
	t.Helper()
	if init == nil {
		init = func(backend.Tx) error { return nil }
	}
	r := &backend.Run{ID: id, Workflow: "wf", Version: "1", Status: backend.Running, Created: time.Now()}
	if ok, err := b.CreateRun(context.Background(), r, init); err != nil || !ok {
		t.Fatalf("CreateRun(%s) = %v, %v", id, ok, err)
	}
}

func statusOf(t *testing.T, b *Backend, id string) statusDoc {
	t.Helper()
	d, _, ok, err := b.readStatus(context.Background(), id)
	if err != nil || !ok {
		t.Fatalf("status item of %s: %v, %v", id, ok, err)
	}
	return d
}

// countValues counts the items of run id's values in the contexts container.
func countValues(t *testing.T, b *Backend, id string) int {
	t.Helper()
	pager := b.contexts.NewQueryItemsPager("SELECT c.id FROM c WHERE c.runId = @runId", azcosmos.NewPartitionKeyString(id),
		&azcosmos.QueryOptions{QueryParameters: []azcosmos.QueryParameter{{Name: "@runId", Value: id}}})
	n := 0
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Items)
	}
	return n
}

// Values from inline bytes on go to Cosmos DB, smaller ones stay in Redis; a small
// value that looks like a reference is stored by reference too; another process reads
// them all back.
func TestValuesByReference(t *testing.T) {
	b, u := open(t)
	ctx := context.Background()
	small := []byte("small")
	large := bytes.Repeat([]byte{0, 1, 2, 0xff}, 40)
	tricky := append(append([]byte{}, refMagic...), "not-an-id"...)
	createRun(t, b, "r", func(tx backend.Tx) error {
		if err := tx.Put("small", small); err != nil {
			return err
		}
		if _, err := tx.PutIfAbsent("large", large); err != nil {
			return err
		}
		return tx.Put("tricky", tricky)
	})
	if n := countValues(t, b, "r"); n != 2 {
		t.Errorf("%d value items, want 2 (large and tricky)", n)
	}
	b2, err := Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	_, vals, err := b2.Read(ctx, "r", "small", "large", "tricky")
	if err != nil || !bytes.Equal(vals["small"], small) || !bytes.Equal(vals["large"], large) || !bytes.Equal(vals["tricky"], tricky) {
		t.Errorf("Read from another process = %q, %v", vals, err)
	}
	// Another process's transition reads the value and stores it under another key:
	// one more item.
	if err := b2.Update(ctx, "r", func(tx backend.Tx) error {
		v, err := tx.Get("large")
		if err != nil || !bytes.Equal(v[0], large) {
			return fmt.Errorf("Get in a transition = %q, %v", v, err)
		}
		return tx.Put("large2", large)
	}); err != nil {
		t.Fatal(err)
	}
	if n := countValues(t, b, "r"); n != 3 {
		t.Errorf("%d value items, want 3", n)
	}
}

// The status item mirrors the run; one that lags (a crash between the Redis commit and
// its update) is found by ListRuns, which repairs it; concurrent writers with stale
// ETags converge on the record.
func TestStatusMirror(t *testing.T) {
	b, u := open(t)
	ctx := context.Background()
	createRun(t, b, "r", nil)
	if d := statusOf(t, b, "r"); d.Status != "running" || d.Workflow != "wf" || d.RunID != "r" {
		t.Fatalf("status item after CreateRun: %+v", d)
	}
	// Commit through Redis alone, as if the process died before the item's update.
	if err := b.rdb.Update(ctx, "r", func(tx backend.Tx) error {
		tx.Run().Status, tx.Run().Result = backend.Completed, []byte(`{"ok":true}`)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := statusOf(t, b, "r"); d.Status != "running" {
		t.Fatalf("status item followed a Redis-only commit: %+v", d)
	}
	rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Completed})
	if err != nil || len(rs) != 1 || rs[0].ID != "r" {
		t.Fatalf("ListRuns(completed) = %v, %v; want r", rs, err)
	}
	if d := statusOf(t, b, "r"); d.Status != "completed" || string(d.Result) != `{"ok":true}` {
		t.Errorf("status item after ListRuns: %+v; want it repaired", d)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running}); err != nil || len(rs) != 0 {
		t.Errorf("ListRuns(running) = %v, %v", rs, err)
	}

	// Two processes, each with the item's ETag of its own last write.
	b2, err := Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	createRun(t, b, "s", nil)
	for i, x := range []*Backend{b2, b, b2, b} {
		st := []backend.Status{backend.Failed, backend.Running, backend.Cancelled, backend.Completed}[i]
		if err := x.Update(ctx, "s", func(tx backend.Tx) error { tx.Run().Status = st; return nil }); err != nil {
			t.Fatal(err)
		}
		if d := statusOf(t, b, "s"); d.Status != string(st) {
			t.Errorf("after update %d: status item %s, want %s", i, d.Status, st)
		}
	}
	r, _, err := b.Read(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if d := statusOf(t, b, "s"); d.LastUpdated != r.Updated.UnixMilli() {
		t.Errorf("status item lastUpdated %d, run updated %d", d.LastUpdated, r.Updated.UnixMilli())
	}
}

// ListRuns reads every page of the query (continuation tokens), and progress refreshes
// lastUpdated at most every touch.
func TestListRunsPagesAndTouch(t *testing.T) {
	b, _ := open(t, "touch", "300ms")
	b.pageSize = 2
	ctx := context.Background()
	var want []string
	for i := range 7 {
		id := fmt.Sprintf("r%d", i)
		createRun(t, b, id, nil)
		want = append([]string{id}, want...)
	}
	calls := b.cosmosCalls.Load()
	rs, err := b.ListRuns(ctx, backend.RunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if pages := b.cosmosCalls.Load() - calls; pages < 4 {
		t.Errorf("ListRuns of 7 runs read %d pages of 2, want 4", pages)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("ListRuns = %v, want %v (newest first)", got, want)
	}
	rs, err = b.ListRuns(ctx, backend.RunFilter{Limit: 3})
	if err != nil || len(rs) != 3 || rs[0].ID != "r6" {
		t.Errorf("ListRuns(limit 3) = %v, %v", rs, err)
	}

	created := statusOf(t, b, "r0").LastUpdated
	incr := func() {
		if err := b.Update(ctx, "r0", func(tx backend.Tx) error { _, err := tx.Incr("n", 1); return err }); err != nil {
			t.Fatal(err)
		}
	}
	incr()
	if d := statusOf(t, b, "r0"); d.LastUpdated != created {
		t.Errorf("lastUpdated refreshed before touch: %d, created %d", d.LastUpdated, created)
	}
	time.Sleep(400 * time.Millisecond)
	incr()
	if d := statusOf(t, b, "r0"); d.LastUpdated <= created {
		t.Errorf("lastUpdated not refreshed after touch: %d, created %d", d.LastUpdated, created)
	}
}

// ExpireRuns deletes a finished run from Redis, its status item and its value items.
func TestExpireRunsDeletesItems(t *testing.T) {
	b, _ := open(t)
	ctx := context.Background()
	createRun(t, b, "r", func(tx backend.Tx) error { return tx.Put("large", bytes.Repeat([]byte("x"), 100)) })
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := countValues(t, b, "r"); n != 1 {
		t.Fatalf("%d value items before expiry, want 1", n)
	}
	if n, err := b.ExpireRuns(ctx, time.Now().Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("ExpireRuns = %d, %v", n, err)
	}
	if n := countValues(t, b, "r"); n != 0 {
		t.Errorf("%d value items after expiry, want 0", n)
	}
	if _, _, ok, err := b.readStatus(ctx, "r"); ok || err != nil {
		t.Errorf("status item after expiry: present %v, %v", ok, err)
	}
}
