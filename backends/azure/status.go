package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/flowgen/flowgen/runtime/backend"
)

// statusDoc is an item of the statuses container: the mirror of one run's record.
type statusDoc struct {
	ID          string            `json:"id"`
	RunID       string            `json:"runId"`
	Status      string            `json:"status"`
	LastUpdated int64             `json:"lastUpdated"` // unix ms
	UpdatedAt   string            `json:"updatedAt"`   // the same, RFC 3339, for people
	Workflow    string            `json:"workflow"`
	Version     string            `json:"version,omitempty"`
	Created     int64             `json:"created"` // unix µs
	Priority    int               `json:"priority,omitempty"`
	Result      json.RawMessage   `json:"result,omitempty"`
	Result64    []byte            `json:"resultBase64,omitempty"` // a result that is not JSON
	FailedNode  string            `json:"failedNode,omitempty"`
	Reason      string            `json:"reason,omitempty"`
	Parent      string            `json:"parent,omitempty"`
	ParentNode  string            `json:"parentNode,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

func docOf(r *backend.Run, updated time.Time) statusDoc {
	d := statusDoc{ID: r.ID, RunID: r.ID, Status: string(r.Status), LastUpdated: updated.UnixMilli(),
		UpdatedAt: updated.UTC().Format(time.RFC3339Nano), Workflow: r.Workflow, Version: r.Version,
		Created: r.Created.UnixMicro(), Priority: r.Priority, FailedNode: r.FailedNode, Reason: r.Reason,
		Parent: r.Parent, ParentNode: r.ParentNode, Metadata: r.Metadata}
	if len(r.Result) > 0 {
		if json.Valid(r.Result) {
			d.Result = r.Result
		} else {
			d.Result64 = r.Result
		}
	}
	return d
}

// same reports whether two items mirror the same record.
func (d *statusDoc) same(o *statusDoc) bool {
	return d.Status == o.Status && d.LastUpdated == o.LastUpdated && d.Workflow == o.Workflow &&
		d.Version == o.Version && d.Created == o.Created && d.Priority == o.Priority &&
		string(d.Result) == string(o.Result) && string(d.Result64) == string(o.Result64) &&
		d.FailedNode == o.FailedNode && d.Reason == o.Reason && d.Parent == o.Parent &&
		d.ParentNode == o.ParentNode && maps.Equal(d.Metadata, o.Metadata)
}

// statusState is what this process knows of a run's status item. sync is held for a
// whole syncStatus and guards etag and doc: the item's ETag and content as of this
// process's last read or write. mu guards synced: the item's lastUpdated as this
// process last wrote or read it.
type statusState struct {
	sync   sync.Mutex
	etag   azcore.ETag
	doc    statusDoc
	mu     sync.Mutex
	synced time.Time
}

// maxStates bounds the status states a process keeps; they are hints, so when there
// are more, all are forgotten.
const maxStates = 50000

func (b *Backend) state(id string) *statusState {
	b.statesMu.Lock()
	defer b.statesMu.Unlock()
	s := b.states[id]
	if s == nil {
		if len(b.states) >= maxStates {
			clear(b.states)
		}
		s = &statusState{}
		b.states[id] = s
	}
	return s
}

func (b *Backend) forget(id string) {
	b.statesMu.Lock()
	delete(b.states, id)
	b.statesMu.Unlock()
}

func (s *statusState) touched(t time.Time) {
	s.mu.Lock()
	if t.After(s.synced) {
		s.synced = t
	}
	s.mu.Unlock()
}

// due reports whether the status item's lastUpdated should be refreshed for progress
// made at now: when the item, as far as this process knows, is older than touch. A
// process that never saw the item takes it as of the run's creation (it is at least
// that recent), so that short runs cost no refresh at all.
func (s *statusState) due(now, created time.Time, touch time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synced.IsZero() {
		s.synced = created
	}
	return now.Sub(s.synced) >= touch
}

// createStatus writes the status item of a run about to be created. It reports
// whether it wrote one (false: an item with this id exists already).
func (b *Backend) createStatus(ctx context.Context, r *backend.Run) (bool, error) {
	created := r.Created
	if created.IsZero() {
		created = time.Now()
	}
	rr := *r
	rr.Created = created
	d := docOf(&rr, created)
	data, err := json.Marshal(d)
	if err != nil {
		return false, err
	}
	resp, err := b.statuses.CreateItem(ctx, azcosmos.NewPartitionKeyString(r.ID), data, nil)
	if statusCode(err) == 409 {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("azure: run %s: create its status item in Cosmos DB: %w", r.ID, err)
	}
	s := b.state(r.ID)
	s.sync.Lock()
	s.etag, s.doc = resp.ETag, d
	s.sync.Unlock()
	s.touched(created)
	return true, nil
}

// readStatus reads run id's status item; ok is false when there is none.
func (b *Backend) readStatus(ctx context.Context, id string) (statusDoc, azcore.ETag, bool, error) {
	resp, err := b.statuses.ReadItem(ctx, azcosmos.NewPartitionKeyString(id), id, nil)
	if statusCode(err) == 404 {
		return statusDoc{}, "", false, nil
	}
	if err != nil {
		return statusDoc{}, "", false, fmt.Errorf("azure: run %s: read its status item: %w", id, err)
	}
	var d statusDoc
	if err := json.Unmarshal(resp.Value, &d); err != nil {
		return statusDoc{}, "", false, fmt.Errorf("azure: run %s: status item: %w", id, err)
	}
	return d, resp.ETag, true, nil
}

// syncStatus brings run id's status item up to date with the run's record in Redis,
// which is the truth. The record is read after the item version it replaces is known,
// and the item is replaced only if that version is still current (IfMatch), so
// concurrent syncs converge on the newest record and never write an older one over a
// newer: a 412 reads the item again and starts over. A run that no longer exists in
// Redis is left alone. With wait false, a sync already in progress in this process
// makes this one return at once (a refresh of lastUpdated, which that one does too).
func (b *Backend) syncStatus(ctx context.Context, id string, wait bool) error {
	s := b.state(id)
	if wait {
		s.sync.Lock()
	} else if !s.sync.TryLock() {
		return nil
	}
	defer func() {
		final := backend.Status(s.doc.Status).Final()
		s.sync.Unlock()
		if final {
			b.forget(id)
		}
	}()
	pk := azcosmos.NewPartitionKeyString(id)
	for attempt := 0; attempt < 20; attempt++ {
		if s.etag == "" {
			d, etag, ok, err := b.readStatus(ctx, id)
			if err != nil {
				return err
			}
			if ok {
				s.doc, s.etag = d, etag
			}
		}
		r, _, err := b.rdb.Read(ctx, id)
		if errors.Is(err, backend.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		d := docOf(r, r.Updated)
		if s.etag != "" && s.doc.same(&d) {
			s.touched(r.Updated)
			return nil
		}
		data, err := json.Marshal(d)
		if err != nil {
			return err
		}
		var resp azcosmos.ItemResponse
		if s.etag == "" {
			resp, err = b.statuses.CreateItem(ctx, pk, data, nil)
		} else {
			etag := s.etag
			resp, err = b.statuses.ReplaceItem(ctx, pk, id, data, &azcosmos.ItemOptions{IfMatchEtag: &etag})
		}
		switch code := statusCode(err); {
		case err == nil:
			s.etag, s.doc = resp.ETag, d
			s.touched(r.Updated)
			return nil
		case code == 412 || code == 409 || code == 404:
			s.etag = "" // changed meanwhile: read it again, then the record
		default:
			return fmt.Errorf("azure: run %s: write its status item: %w", id, err)
		}
	}
	return fmt.Errorf("azure: run %s: status item kept changing; gave up updating it", id)
}

// orphanAge is how old a status item without a run in Redis must be before ListRuns
// deletes it: younger, it may belong to a CreateRun in flight.
const orphanAge = 10 * time.Minute

// ListRuns lists runs matching f, newest first (backend.Store). It queries the statuses
// container with a parameterised query (status, workflow, lastUpdated < UpdatedBefore),
// page by page with continuation tokens, then checks each candidate against its record
// in Redis, which is the truth: a run that no longer matches is left out, and a status
// item that lags behind its record (the item is updated just after the commit, or
// after a crash not at all) is repaired. The gateway cannot ORDER BY across
// partitions, so the order is made here. An item's lastUpdated is never later than its
// run's last change, so the query finds every run not updated since UpdatedBefore, and
// more; a query for a final status also takes the running items as candidates, since
// a run's end reaches its item last. A rerun (final to running) whose item update was
// lost is found by a query for running runs only once its item is repaired.
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	var where []string
	var params []azcosmos.QueryParameter
	switch {
	case f.Status == backend.Running:
		where = append(where, "c.status = @status")
		params = append(params, azcosmos.QueryParameter{Name: "@status", Value: string(f.Status)})
	case f.Status != "":
		// A run that just ended may still have a running item: the item is updated
		// after the commit that ended the run (and whoever awaited the run may list it
		// before that). So running items are candidates too.
		where = append(where, "(c.status = @status OR c.status = @running)")
		params = append(params, azcosmos.QueryParameter{Name: "@status", Value: string(f.Status)},
			azcosmos.QueryParameter{Name: "@running", Value: string(backend.Running)})
	}
	if f.Workflow != "" {
		where = append(where, "c.workflow = @workflow")
		params = append(params, azcosmos.QueryParameter{Name: "@workflow", Value: f.Workflow})
	}
	if !f.UpdatedBefore.IsZero() {
		where = append(where, "c.lastUpdated < @before")
		params = append(params, azcosmos.QueryParameter{Name: "@before", Value: f.UpdatedBefore.UnixMilli() + 1})
	}
	docs, err := b.queryStatuses(ctx, where, params)
	if err != nil {
		return nil, err
	}
	runs := make([]*backend.Run, len(docs))
	errs := make([]error, len(docs))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, d := range docs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			runs[i], errs[i] = b.checkCandidate(ctx, d, f)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := runs[:0]
	for _, r := range runs {
		if r != nil {
			out = append(out, r)
		}
	}
	sortRuns(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// checkCandidate returns the run of status item d if its record in Redis matches f,
// and repairs the item when it lags behind the record.
func (b *Backend) checkCandidate(ctx context.Context, d statusDoc, f backend.RunFilter) (*backend.Run, error) {
	r, _, err := b.rdb.Read(ctx, d.RunID)
	if errors.Is(err, backend.ErrNotFound) {
		if time.Since(time.UnixMicro(d.Created)) > orphanAge && time.Since(time.UnixMilli(d.LastUpdated)) > orphanAge {
			b.deleteStatus(ctx, d.RunID)
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if cur := docOf(r, r.Updated); cur.Status != d.Status || string(cur.Result) != string(d.Result) || cur.Reason != d.Reason {
		slog.Info("azure: repairing a status item that lags behind its run", "run", d.RunID, "item", d.Status, "run_status", r.Status)
		if err := b.syncStatus(ctx, d.RunID, true); err != nil {
			slog.Warn("azure: status item not repaired", "run", d.RunID, "err", err)
		}
	}
	match := (f.Status == "" || r.Status == f.Status) && (f.Workflow == "" || r.Workflow == f.Workflow) &&
		(f.UpdatedBefore.IsZero() || r.Updated.UnixMicro() < f.UpdatedBefore.UnixMicro())
	if !match {
		return nil, nil
	}
	return r, nil
}

// queryStatuses returns the status items matching where, every page of them.
func (b *Backend) queryStatuses(ctx context.Context, where []string, params []azcosmos.QueryParameter) ([]statusDoc, error) {
	q := "SELECT * FROM c"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	var out []statusDoc
	pager := b.statuses.NewQueryItemsPager(q, azcosmos.NewPartitionKey(), &azcosmos.QueryOptions{
		QueryParameters: params, PageSizeHint: b.pageSize})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azure: query the status items: %w", err)
		}
		for _, it := range page.Items {
			var d statusDoc
			if err := json.Unmarshal(it, &d); err != nil {
				return nil, fmt.Errorf("azure: status item: %w", err)
			}
			if d.RunID != "" {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// deleteStatus deletes run id's status item and the items of its values.
func (b *Backend) deleteStatus(ctx context.Context, id string) {
	if err := b.deleteValues(ctx, id); err != nil {
		slog.Warn("azure: values of a deleted run not deleted", "run", id, "err", err)
		return
	}
	_, err := b.statuses.DeleteItem(ctx, azcosmos.NewPartitionKeyString(id), id, nil)
	if err != nil && statusCode(err) != 404 {
		slog.Warn("azure: status item of a deleted run not deleted", "run", id, "err", err)
	}
	b.forget(id)
}

// deleteValues deletes the items of run id's values: the ids of its partition, by a
// query that names the run (the local emulator ignores the partition key of queries).
func (b *Backend) deleteValues(ctx context.Context, id string) error {
	pk := azcosmos.NewPartitionKeyString(id)
	pager := b.contexts.NewQueryItemsPager("SELECT c.id FROM c WHERE c.runId = @runId", pk, &azcosmos.QueryOptions{
		QueryParameters: []azcosmos.QueryParameter{{Name: "@runId", Value: id}}, PageSizeHint: b.pageSize})
	var ids []string
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("azure: run %s: list its values: %w", id, err)
		}
		for _, it := range page.Items {
			var d struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(it, &d) == nil && d.ID != "" {
				ids = append(ids, d.ID)
			}
		}
	}
	b.vals.dropRun(id)
	if len(ids) == 0 {
		return nil
	}
	return b.each(len(ids), func(i int) error {
		_, err := b.contexts.DeleteItem(ctx, pk, ids[i], nil)
		if err != nil && statusCode(err) != 404 {
			return fmt.Errorf("azure: run %s: delete value %s: %w", id, ids[i], err)
		}
		return nil
	})
}

// ExpireRuns deletes every finished run last updated before before, except the
// finished child runs of subflows whose parent still runs (backend.Expirer): the
// Redis backend's ExpireRuns deletes the records and coordination state, then the
// status items and the values in Cosmos DB of the runs it deleted go too. Runs whose
// status item lagged are cleaned up by ListRuns once their item is old (orphanAge).
func (b *Backend) ExpireRuns(ctx context.Context, before time.Time) (int, error) {
	if err := b.check(); err != nil {
		return 0, err
	}
	docs, err := b.queryStatuses(ctx, []string{"c.status != @running", "c.lastUpdated < @before"}, []azcosmos.QueryParameter{
		{Name: "@running", Value: string(backend.Running)}, {Name: "@before", Value: before.UnixMilli() + 1}})
	if err != nil {
		return 0, err
	}
	n, err := b.rdb.ExpireRuns(ctx, before)
	if err != nil {
		return n, err
	}
	for _, d := range docs {
		if _, _, err := b.rdb.Read(ctx, d.RunID); errors.Is(err, backend.ErrNotFound) {
			b.deleteStatus(ctx, d.RunID)
		}
	}
	return n, nil
}
