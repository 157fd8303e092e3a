package aws

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/dynamodb/attributevalue"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowgen/flowgen/runtime/backend"
)

// mirrorAttrs are the attributes of a status mirror that ListRuns and ExpireRuns read.
var mirrorAttrs = []string{"runId", "status", "lastUpdated", "created", "mver"}

// candidates returns the status mirrors that match f on the mirror: with a status, a
// Query of the status-lastUpdated index (UpdatedBefore as a key condition), page by
// page; without one, a Scan of the statuses table, page by page.
func (b *Backend) candidates(ctx context.Context, f backend.RunFilter) ([]statusItem, error) {
	names := map[string]string{}
	proj := make([]string, len(mirrorAttrs))
	for i, a := range mirrorAttrs {
		n := "#m" + strconv.Itoa(i)
		names[n] = a
		proj[i] = n
	}
	vals := map[string]dtypes.AttributeValue{}
	var filters []string
	if f.Workflow != "" {
		names["#wf"] = "workflow"
		vals[":wf"] = &dtypes.AttributeValueMemberS{Value: f.Workflow}
		filters = append(filters, "#wf = :wf")
	}
	var cutoff string
	if !f.UpdatedBefore.IsZero() {
		names["#lu"] = "lastUpdated"
		vals[":lu"] = num(f.UpdatedBefore.UnixNano())
		cutoff = "#lu < :lu"
	}
	var items []map[string]dtypes.AttributeValue
	if f.Status != "" {
		names["#st"] = "status"
		vals[":st"] = &dtypes.AttributeValueMemberS{Value: string(f.Status)}
		key := "#st = :st"
		if cutoff != "" {
			key += " AND " + cutoff
		}
		in := &dynamodb.QueryInput{TableName: &b.opts.Statuses, IndexName: awssdk.String(StatusIndex),
			KeyConditionExpression: &key, ExpressionAttributeNames: names, ExpressionAttributeValues: vals,
			ProjectionExpression: awssdk.String(strings.Join(proj, ", "))}
		if len(filters) > 0 {
			in.FilterExpression = awssdk.String(strings.Join(filters, " AND "))
		}
		p := dynamodb.NewQueryPaginator(b.ddb, in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("aws: query runs by status: %w", err)
			}
			items = append(items, out.Items...)
		}
	} else {
		if cutoff != "" {
			filters = append(filters, cutoff)
		}
		in := &dynamodb.ScanInput{TableName: &b.opts.Statuses, ExpressionAttributeNames: names,
			ProjectionExpression: awssdk.String(strings.Join(proj, ", ")), ConsistentRead: awssdk.Bool(true)}
		if len(vals) > 0 {
			in.ExpressionAttributeValues = vals
		}
		if len(filters) > 0 {
			in.FilterExpression = awssdk.String(strings.Join(filters, " AND "))
		}
		p := dynamodb.NewScanPaginator(b.ddb, in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("aws: scan runs: %w", err)
			}
			items = append(items, out.Items...)
		}
	}
	ms := make([]statusItem, len(items))
	for i, item := range items {
		if err := attributevalue.UnmarshalMap(item, &ms[i]); err != nil {
			return nil, fmt.Errorf("aws: decode a run status: %w", err)
		}
	}
	return ms, nil
}

// truths reads the coordination items (without their state) of ms's runs, strongly
// consistent, with BatchGetItem, and repairs the mirrors that are older than their
// coordination item. Runs without a coordination item (deleted, or expired by TTL) are
// missing from the map.
func (b *Backend) truths(ctx context.Context, ms []statusItem) (map[string]*coordItem, error) {
	names := map[string]string{}
	proj := make([]string, len(runAttrs))
	for i, a := range runAttrs {
		n := "#a" + strconv.Itoa(i)
		names[n] = a
		proj[i] = n
	}
	out := make(map[string]*coordItem, len(ms))
	now := time.Now()
	for rest := ms; len(rest) > 0; {
		n := min(len(rest), 100)
		keys := make([]map[string]dtypes.AttributeValue, 0, n)
		seen := map[string]bool{}
		for _, m := range rest[:n] {
			if !seen[m.RunID] {
				seen[m.RunID] = true
				keys = append(keys, pkKey(m.RunID))
			}
		}
		rest = rest[n:]
		req := map[string]dtypes.KeysAndAttributes{b.opts.Coordination: {Keys: keys, ConsistentRead: awssdk.Bool(true),
			ProjectionExpression: awssdk.String(strings.Join(proj, ", ")), ExpressionAttributeNames: names}}
		for try := 0; len(req) > 0; try++ {
			res, err := b.ddb.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
			if err != nil {
				return nil, fmt.Errorf("aws: read runs: %w", err)
			}
			for _, item := range res.Responses[b.opts.Coordination] {
				var it coordItem
				if err := attributevalue.UnmarshalMap(item, &it); err != nil {
					return nil, fmt.Errorf("aws: decode a run: %w", err)
				}
				if !expired(it.ExpiresAt, now) {
					out[it.PK] = &it
				}
			}
			req = res.UnprocessedKeys
			if len(req) > 0 {
				if err := jitter(ctx, time.Duration(min(try+1, 10))*20*time.Millisecond); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, m := range ms {
		it := out[m.RunID]
		if it == nil {
			continue
		}
		if it.Created != m.Created || it.Ver > m.MVer || (it.Ver == m.MVer && (it.Status != m.Status || it.LastUpdated != m.LastUpdated)) {
			// A stale mirror: a crash between a transition and its mirror write,
			// progress not mirrored yet (touch=), or a status change's early mirror
			// whose transition did not commit.
			if err := b.repairMirrorOver(ctx, it, &m); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// matches reports whether the run matches f.
func matches(r *backend.Run, f backend.RunFilter) bool {
	return (f.Status == "" || r.Status == f.Status) && (f.Workflow == "" || r.Workflow == f.Workflow) &&
		(f.UpdatedBefore.IsZero() || r.Updated.Before(f.UpdatedBefore))
}

// ListRuns lists runs newest first. It finds candidates in the statuses table (with a
// status, a paginated Query of the status-lastUpdated index, UpdatedBefore as a key
// condition; without one, a paginated Scan), newest first, then reads their coordination items, 100 at a time, and
// returns the runs as those record them, leaving out those that no longer match f, until
// it has f.Limit runs. A stale mirror met on the way is repaired. A run whose mirror does
// not match f while its coordination item does is missed: its mirror is stale after a
// crash between the two writes, or it progressed less than touch= ago.
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	ms, err := b.candidates(ctx, f)
	if err != nil {
		return nil, err
	}
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Created != ms[j].Created {
			return ms[i].Created > ms[j].Created
		}
		return ms[i].RunID > ms[j].RunID
	})
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	runs := []*backend.Run{}
	for len(ms) > 0 && len(runs) < limit {
		n := min(len(ms), 100)
		chunk := ms[:n]
		ms = ms[n:]
		truth, err := b.truths(ctx, chunk)
		if err != nil {
			return nil, err
		}
		for _, m := range chunk {
			it := truth[m.RunID]
			if it == nil || it.Created != m.Created {
				continue
			}
			if r := it.run(); matches(r, f) && len(runs) < limit {
				runs = append(runs, r)
			}
		}
	}
	return runs, nil
}

// ExpireRuns deletes the runs in a final status last updated before before: it finds
// them through the status-lastUpdated index (one paginated Query per final status),
// checks each against its coordination item, and deletes the coordination item (on the
// condition that its version is still the one checked), then the run's contexts items,
// then its status mirror. A finished subflow child whose parent still runs is kept.
// DynamoDB's TTL deletes finished runs by itself (ttl=); ExpireRuns is for servers
// without TTL and for an exact cutoff.
func (b *Backend) ExpireRuns(ctx context.Context, before time.Time) (int, error) {
	if err := b.check(); err != nil {
		return 0, err
	}
	var ms []statusItem
	for _, st := range []backend.Status{backend.Completed, backend.Failed, backend.Cancelled} {
		c, err := b.candidates(ctx, backend.RunFilter{Status: st, UpdatedBefore: before})
		if err != nil {
			return 0, err
		}
		ms = append(ms, c...)
	}
	parents := map[string]bool{} // parent run id -> still running
	running := func(id string) (bool, error) {
		if r, ok := parents[id]; ok {
			return r, nil
		}
		it, err := b.load(ctx, id)
		if errors.Is(err, backend.ErrNotFound) {
			parents[id] = false
			return false, nil
		}
		if err != nil {
			return false, err
		}
		parents[id] = !backend.Status(it.Status).Final()
		return parents[id], nil
	}
	n := 0
	for len(ms) > 0 {
		k := min(len(ms), 100)
		chunk := ms[:k]
		ms = ms[k:]
		truth, err := b.truths(ctx, chunk)
		if err != nil {
			return n, err
		}
		for _, m := range chunk {
			it := truth[m.RunID]
			if it == nil {
				if err := b.deleteMirror(ctx, m); err != nil {
					return n, err
				}
				continue
			}
			r := it.run()
			if it.Created != m.Created || !r.Status.Final() || !r.Updated.Before(before) {
				continue
			}
			if r.Parent != "" {
				if run, err := running(r.Parent); err != nil {
					return n, err
				} else if run {
					continue
				}
			}
			deleted, err := b.deleteRun(ctx, it)
			if err != nil {
				return n, err
			}
			if deleted {
				n++
				parents[it.PK] = false
			}
		}
	}
	return n, nil
}

// deleteRun deletes the run's coordination item if it is still at it's version, then
// its contexts items and its status mirror.
func (b *Backend) deleteRun(ctx context.Context, it *coordItem) (bool, error) {
	_, err := b.ddb.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: &b.opts.Coordination, Key: pkKey(it.PK),
		ConditionExpression:       awssdk.String("ver = :v"),
		ExpressionAttributeValues: map[string]dtypes.AttributeValue{":v": num(it.Ver)}})
	if isConditionFailed(err) {
		return false, nil // changed since: a rerun, or expired by someone else
	}
	if err != nil {
		return false, fmt.Errorf("aws: delete run %s: %w", it.PK, err)
	}
	b.forget(it.PK)
	var keys []map[string]dtypes.AttributeValue
	if err := b.eachRef(ctx, it.PK, func(key map[string]dtypes.AttributeValue) error {
		keys = append(keys, key)
		return nil
	}); err != nil {
		return true, err
	}
	for len(keys) > 0 {
		k := min(len(keys), 25)
		reqs := make([]dtypes.WriteRequest, k)
		for i, key := range keys[:k] {
			reqs[i] = dtypes.WriteRequest{DeleteRequest: &dtypes.DeleteRequest{Key: key}}
		}
		keys = keys[k:]
		req := map[string][]dtypes.WriteRequest{b.opts.Contexts: reqs}
		for try := 0; len(req) > 0; try++ {
			out, err := b.ddb.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: req})
			if err != nil {
				return true, fmt.Errorf("aws: delete the values of run %s: %w", it.PK, err)
			}
			req = out.UnprocessedItems
			if len(req) > 0 {
				if err := jitter(ctx, time.Duration(min(try+1, 10))*20*time.Millisecond); err != nil {
					return true, err
				}
			}
		}
	}
	return true, b.deleteMirror(ctx, *mirrorOf(it))
}

// deleteMirror deletes a status mirror unless a newer incarnation of the run id owns it.
func (b *Backend) deleteMirror(ctx context.Context, m statusItem) error {
	_, err := b.ddb.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: &b.opts.Statuses,
		Key:                       map[string]dtypes.AttributeValue{"runId": &dtypes.AttributeValueMemberS{Value: m.RunID}},
		ConditionExpression:       awssdk.String("created = :c"),
		ExpressionAttributeValues: map[string]dtypes.AttributeValue{":c": num(m.Created)}})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("aws: delete the status of run %s: %w", m.RunID, err)
	}
	return nil
}
