package aws

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowgen/flowgen/runtime/backend"
)

func getMirror(t *testing.T, b *Backend, id string) *statusItem {
	t.Helper()
	out, err := b.ddb.GetItem(context.Background(), &dynamodb.GetItemInput{TableName: &b.opts.Statuses, ConsistentRead: awssdk.Bool(true),
		Key: map[string]dtypes.AttributeValue{"runId": &dtypes.AttributeValueMemberS{Value: id}}})
	if err != nil {
		t.Fatal(err)
	}
	if out.Item == nil {
		return nil
	}
	var m statusItem
	if err := attributevalue.UnmarshalMap(out.Item, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// TestMirror checks the status mirror: written at creation and when the status
// changes, not on every transition; a stale mirror (a crash between the coordination
// write and the mirror write) is left out of ListRuns and repaired by it; a finished
// run's coordination item, mirror and contexts items carry the TTL attribute.
func TestMirror(t *testing.T) {
	b, _ := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	if ok, err := b.CreateRun(ctx, &backend.Run{ID: "r", Workflow: "wf", Status: backend.Running, Created: now, Updated: now},
		func(tx backend.Tx) error { return tx.Put("big", bytes.Repeat([]byte("x"), 4000)) }); err != nil || !ok {
		t.Fatalf("CreateRun = %v, %v", ok, err)
	}
	if m := getMirror(t, b, "r"); m == nil || m.Status != "running" || m.MVer != 1 {
		t.Fatalf("mirror after creation = %+v", m)
	}
	calls := b.ddbCalls.Load()
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { _, err := tx.Incr("n", 1); return err }); err != nil {
		t.Fatal(err)
	}
	if n := b.ddbCalls.Load() - calls; n != 1 {
		t.Errorf("a progress transition within touch= made %d DynamoDB calls, want 1 (UpdateItem, from the cached item)", n)
	}
	if m := getMirror(t, b, "r"); m.MVer != 1 {
		t.Errorf("progress within touch= rewrote the mirror: %+v", m)
	}
	stale := getMirror(t, b, "r")
	if err := b.Update(ctx, "r", func(tx backend.Tx) error {
		tx.Run().Status, tx.Run().Result = backend.Completed, []byte(`42`)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m := getMirror(t, b, "r")
	if m.Status != "completed" || string(m.Result) != "42" || m.MVer != 3 || m.ExpiresAt < time.Now().Add(DefaultTTL-time.Minute).Unix() {
		t.Errorf("mirror of the completed run = %+v", m)
	}
	it, err := b.load(ctx, "r")
	if err != nil || it.ExpiresAt != m.ExpiresAt || it.Refs != 1 {
		t.Errorf("coordination item = %+v, %v; want expiresAt %d and one ref", it, err, m.ExpiresAt)
	}
	n := 0
	if err := b.eachRef(ctx, "r", func(key map[string]dtypes.AttributeValue) error {
		out, err := b.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: &b.opts.Contexts, Key: key, ConsistentRead: awssdk.Bool(true)})
		if err != nil {
			return err
		}
		if e, ok := out.Item["expiresAt"].(*dtypes.AttributeValueMemberN); !ok || e.Value == "" {
			t.Errorf("contexts item without expiresAt: %v", out.Item)
		}
		n++
		return nil
	}); err != nil || n != 1 {
		t.Errorf("contexts items = %d, %v; want 1", n, err)
	}

	// A crash between the coordination write and the mirror write: the mirror still
	// says running.
	item, _ := attributevalue.MarshalMap(stale)
	if _, err := b.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: &b.opts.Statuses, Item: item}); err != nil {
		t.Fatal(err)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running}); err != nil || len(rs) != 0 {
		t.Errorf("ListRuns(running) = %v, %v; want none (the mirror is stale)", ids(rs), err)
	}
	if m := getMirror(t, b, "r"); m.Status != "completed" || m.MVer != 3 {
		t.Errorf("ListRuns did not repair the stale mirror: %+v", m)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Completed}); err != nil || len(rs) != 1 || string(rs[0].Result) != "42" {
		t.Errorf("ListRuns(completed) = %v, %v; want r", ids(rs), err)
	}

	// A rerun makes it running again: no TTL any more, anywhere.
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status, tx.Run().Result = backend.Running, nil; return nil }); err != nil {
		t.Fatal(err)
	}
	if m := getMirror(t, b, "r"); m.Status != "running" || m.ExpiresAt != 0 {
		t.Errorf("mirror after a rerun = %+v", m)
	}
	if it, err := b.load(ctx, "r"); err != nil || it.ExpiresAt != 0 {
		t.Errorf("coordination item after a rerun = %+v, %v", it, err)
	}
}

func ids(rs []*backend.Run) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// TestTTL checks what a passed TTL means before DynamoDB deletes the items (dynalite
// never does): the run is gone for Read, Update (even from this process's cached copy)
// and ListRuns, and its id can be used again, even by a run with an older creation time.
func TestTTL(t *testing.T) {
	b, _ := open(t, "ttl=1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	if ok, err := b.CreateRun(ctx, &backend.Run{ID: "r", Workflow: "wf", Status: backend.Running, Created: now, Updated: now},
		func(tx backend.Tx) error { return tx.Put("k", []byte("old")) }); err != nil || !ok {
		t.Fatalf("CreateRun = %v, %v", ok, err)
	}
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Completed; return nil }); err != nil {
		t.Fatal(err)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Completed}); err != nil || len(rs) != 1 {
		t.Fatalf("ListRuns(completed) = %v, %v; want r", ids(rs), err)
	}
	time.Sleep(2100 * time.Millisecond)
	if _, _, err := b.Read(ctx, "r"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Read of an expired run = %v, want ErrNotFound", err)
	}
	// The cached copy is still there: the conditional write must refuse it.
	b.remember(&coordItem{PK: "r", Status: "completed", Created: now.UnixNano(), Ver: 3, ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err := b.Update(ctx, "r", func(tx backend.Tx) error { tx.Run().Status = backend.Running; return nil }); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Update of an expired run = %v, want ErrNotFound", err)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{}); err != nil || len(rs) != 0 {
		t.Errorf("ListRuns = %v, %v; want no run", ids(rs), err)
	}
	older := now.Add(-time.Hour)
	if ok, err := b.CreateRun(ctx, &backend.Run{ID: "r", Workflow: "wf2", Status: backend.Running, Created: older, Updated: older},
		func(backend.Tx) error { return nil }); err != nil || !ok {
		t.Fatalf("CreateRun over an expired run = %v, %v; want created", ok, err)
	}
	if r, vals, err := b.Read(ctx, "r", "k"); err != nil || r.Workflow != "wf2" || len(vals) != 0 {
		t.Errorf("Read of the new run = %+v, %v, %v", r, vals, err)
	}
	if rs, err := b.ListRuns(ctx, backend.RunFilter{Status: backend.Running}); err != nil || len(rs) != 1 || rs[0].Workflow != "wf2" {
		t.Errorf("ListRuns(running) = %v, %v; want the new r", ids(rs), err)
	}
}
