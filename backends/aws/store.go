package aws

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
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

// statusItem is a run's item in the statuses table.
type statusItem struct {
	RunID       string `dynamodbav:"runId"`
	Status      string `dynamodbav:"status"`
	LastUpdated int64  `dynamodbav:"lastUpdated"` // Unix nanoseconds
	Created     int64  `dynamodbav:"created"`     // Unix nanoseconds
	Workflow    string `dynamodbav:"workflow,omitempty"`
	WfVersion   string `dynamodbav:"wfVersion,omitempty"`
	Priority    int    `dynamodbav:"priority,omitempty"`
	Input       []byte `dynamodbav:"input,omitempty"`
	Result      []byte `dynamodbav:"result,omitempty"`
	FailedNode  string `dynamodbav:"failedNode,omitempty"`
	Reason      string `dynamodbav:"reason,omitempty"`
	Parent      string `dynamodbav:"parent,omitempty"`
	ParentNode  string `dynamodbav:"parentNode,omitempty"`
	Metadata    string `dynamodbav:"metadata,omitempty"` // JSON object
	State       []byte `dynamodbav:"state,omitempty"`    // encoded entries
	Ver         int64  `dynamodbav:"ver"`
}

// runAttrs are the attributes ListRuns reads (everything but the state).
var runAttrs = []string{"runId", "status", "lastUpdated", "created", "workflow", "wfVersion", "priority", "input",
	"result", "failedNode", "reason", "parent", "parentNode", "metadata"}

func (it *statusItem) run() *backend.Run {
	r := &backend.Run{ID: it.RunID, Workflow: it.Workflow, Version: it.WfVersion, Status: backend.Status(it.Status),
		Priority: it.Priority, Input: it.Input, Result: it.Result, FailedNode: it.FailedNode, Reason: it.Reason,
		Parent: it.Parent, ParentNode: it.ParentNode, Created: time.Unix(0, it.Created), Updated: time.Unix(0, it.LastUpdated)}
	if it.Metadata != "" {
		_ = json.Unmarshal([]byte(it.Metadata), &r.Metadata)
	}
	return r
}

func newStatusItem(r *backend.Run, state []byte, ver int64) *statusItem {
	it := &statusItem{RunID: r.ID, Status: string(r.Status), LastUpdated: r.Updated.UnixNano(), Created: r.Created.UnixNano(),
		Workflow: r.Workflow, WfVersion: r.Version, Priority: r.Priority, Input: r.Input, Result: r.Result,
		FailedNode: r.FailedNode, Reason: r.Reason, Parent: r.Parent, ParentNode: r.ParentNode, State: state, Ver: ver}
	if len(r.Metadata) > 0 {
		md, _ := json.Marshal(r.Metadata)
		it.Metadata = string(md)
	}
	return it
}

// entry is one key of a run's state: its value inline, or a reference to an item of
// the contexts table.
type entry struct {
	val []byte
	ref string
}

// encodeState encodes the state as (key, tag, payload) records, keys sorted.
func encodeState(es map[string]entry) []byte {
	keys := make([]string, 0, len(es))
	for k := range es {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var buf []byte
	buf = binary.AppendUvarint(buf, uint64(len(keys)))
	for _, k := range keys {
		e := es[k]
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		if e.ref != "" {
			buf = append(buf, 1)
			buf = binary.AppendUvarint(buf, uint64(len(e.ref)))
			buf = append(buf, e.ref...)
		} else {
			buf = append(buf, 0)
			buf = binary.AppendUvarint(buf, uint64(len(e.val)))
			buf = append(buf, e.val...)
		}
	}
	return buf
}

var errCorrupt = errors.New("aws: corrupt run state in the status item")

func decodeState(buf []byte) (map[string]entry, error) {
	es := map[string]entry{}
	if len(buf) == 0 {
		return es, nil
	}
	next := func() ([]byte, error) {
		n, w := binary.Uvarint(buf)
		if w <= 0 || uint64(len(buf)-w) < n {
			return nil, errCorrupt
		}
		s := buf[w : w+int(n)]
		buf = buf[w+int(n):]
		return s, nil
	}
	count, w := binary.Uvarint(buf)
	if w <= 0 {
		return nil, errCorrupt
	}
	buf = buf[w:]
	for range count {
		k, err := next()
		if err != nil || len(buf) == 0 {
			return nil, errCorrupt
		}
		tag := buf[0]
		buf = buf[1:]
		v, err := next()
		if err != nil {
			return nil, err
		}
		if tag == 1 {
			es[string(k)] = entry{ref: string(v)}
		} else {
			es[string(k)] = entry{val: append([]byte{}, v...)}
		}
	}
	return es, nil
}

// load reads a run's status item with a strongly consistent read.
func (b *Backend) load(ctx context.Context, id string) (*statusItem, error) {
	out, err := b.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: &b.opts.Statuses, ConsistentRead: awssdk.Bool(true),
		Key: map[string]dtypes.AttributeValue{"runId": &dtypes.AttributeValueMemberS{Value: id}}})
	if err != nil {
		return nil, fmt.Errorf("aws: read run %s: %w", id, err)
	}
	if out.Item == nil {
		return nil, backend.ErrNotFound
	}
	var it statusItem
	if err := attributevalue.UnmarshalMap(out.Item, &it); err != nil {
		return nil, fmt.Errorf("aws: decode run %s: %w", id, err)
	}
	return &it, nil
}

// values returns the values of refs of run id, from the cache or the contexts table.
func (b *Backend) values(ctx context.Context, id string, refs []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(refs))
	var missing []string
	b.refMu.Lock()
	for _, r := range refs {
		if v, ok := b.refs[id+"/"+r]; ok {
			out[r] = v
		} else if _, dup := out[r]; !dup {
			out[r] = nil
			missing = append(missing, r)
		}
	}
	b.refMu.Unlock()
	for len(missing) > 0 {
		n := min(len(missing), 100)
		keys := make([]map[string]dtypes.AttributeValue, n)
		for i, r := range missing[:n] {
			keys[i] = map[string]dtypes.AttributeValue{"runId": &dtypes.AttributeValueMemberS{Value: id},
				"ref": &dtypes.AttributeValueMemberS{Value: r}}
		}
		missing = missing[n:]
		req := map[string]dtypes.KeysAndAttributes{b.opts.Contexts: {Keys: keys, ConsistentRead: awssdk.Bool(true)}}
		for try := 0; len(req) > 0; try++ {
			res, err := b.ddb.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
			if err != nil {
				return nil, fmt.Errorf("aws: read values of run %s: %w", id, err)
			}
			for _, item := range res.Responses[b.opts.Contexts] {
				r, _ := item["ref"].(*dtypes.AttributeValueMemberS)
				v, _ := item["v"].(*dtypes.AttributeValueMemberB)
				if r != nil {
					val := []byte{}
					if v != nil {
						val = v.Value
					}
					out[r.Value] = val
					b.cache(id, r.Value, val)
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
	for r, v := range out {
		if v == nil {
			return nil, fmt.Errorf("aws: run %s: value %s is missing from table %s", id, r, b.opts.Contexts)
		}
	}
	return out, nil
}

// maxCache bounds the bytes of referenced values kept in memory.
const maxCache = 64 << 20

func (b *Backend) cache(id, ref string, v []byte) {
	b.refMu.Lock()
	defer b.refMu.Unlock()
	if b.refBytes+len(v) > maxCache {
		b.refs, b.refBytes = map[string][]byte{}, 0
	}
	b.refs[id+"/"+ref] = v
	b.refBytes += len(v)
}

// putValues writes values by reference into the contexts table (before the status item
// that names them, so that a reader never finds a dangling reference).
func (b *Backend) putValues(ctx context.Context, id string, vals map[string][]byte) error {
	var reqs []dtypes.WriteRequest
	for r, v := range vals {
		reqs = append(reqs, dtypes.WriteRequest{PutRequest: &dtypes.PutRequest{Item: map[string]dtypes.AttributeValue{
			"runId": &dtypes.AttributeValueMemberS{Value: id}, "ref": &dtypes.AttributeValueMemberS{Value: r},
			"v": &dtypes.AttributeValueMemberB{Value: v}}}})
	}
	if len(reqs) == 1 {
		if _, err := b.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: &b.opts.Contexts, Item: reqs[0].PutRequest.Item}); err != nil {
			return fmt.Errorf("aws: write a value of run %s: %w", id, tooLarge(err))
		}
		reqs = nil
	}
	for len(reqs) > 0 {
		n := min(len(reqs), 25)
		req := map[string][]dtypes.WriteRequest{b.opts.Contexts: reqs[:n]}
		reqs = reqs[n:]
		for try := 0; len(req) > 0; try++ {
			out, err := b.ddb.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: req})
			if err != nil {
				return fmt.Errorf("aws: write values of run %s: %w", id, tooLarge(err))
			}
			req = out.UnprocessedItems
			if len(req) > 0 {
				if err := jitter(ctx, time.Duration(min(try+1, 10))*20*time.Millisecond); err != nil {
					return err
				}
			}
		}
	}
	for r, v := range vals {
		b.cache(id, r, v)
	}
	return nil
}

// tooLarge wraps backend.ErrTooLarge around DynamoDB's item-size error.
func tooLarge(err error) error {
	if isCode(err, "ValidationException") && strings.Contains(strings.ToLower(err.Error()), "size") {
		return fmt.Errorf("%w (DynamoDB's item limit is 400 KB): %w", backend.ErrTooLarge, err)
	}
	return err
}

func newRef() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// tx is one transition over a loaded status item.
type tx struct {
	b       *Backend
	ctx     context.Context
	id      string
	run     backend.Run
	entries map[string]entry
	writes  map[string][]byte // nil: deleted
	jobs    []backend.Job
}

func (t *tx) Run() *backend.Run { return &t.run }

func (t *tx) has(k string) bool {
	if v, ok := t.writes[k]; ok {
		return v != nil
	}
	_, ok := t.entries[k]
	return ok
}

func (t *tx) Get(keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	var refs []string
	for i, k := range keys {
		if v, ok := t.writes[k]; ok {
			out[i] = v
		} else if e, ok := t.entries[k]; ok {
			if e.ref != "" {
				refs = append(refs, e.ref)
			} else {
				out[i] = e.val
			}
		}
	}
	if len(refs) == 0 {
		return out, nil
	}
	vals, err := t.b.values(t.ctx, t.id, refs)
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		if _, ok := t.writes[k]; !ok {
			if e, ok := t.entries[k]; ok && e.ref != "" {
				out[i] = vals[e.ref]
			}
		}
	}
	return out, nil
}

func (t *tx) check(what string, v []byte) error {
	if len(v) > MaxValueSize {
		return fmt.Errorf("aws: %s of %d bytes exceeds the limit of %d: %w", what, len(v), MaxValueSize, backend.ErrTooLarge)
	}
	return nil
}

func (t *tx) PutIfAbsent(key string, val []byte) (bool, error) {
	if t.has(key) {
		return false, nil
	}
	return true, t.Put(key, val)
}

func (t *tx) Put(key string, val []byte) error {
	if err := t.check("value of "+key, val); err != nil {
		return err
	}
	if val == nil {
		val = []byte{}
	}
	t.writes[key] = val
	return nil
}

func (t *tx) Delete(keys ...string) error {
	for _, k := range keys {
		t.writes[k] = nil
	}
	return nil
}

func (t *tx) Incr(key string, delta int64) (int64, error) {
	vs, err := t.Get(key)
	if err != nil {
		return 0, err
	}
	var n int64
	if vs[0] != nil {
		if n, err = strconv.ParseInt(string(vs[0]), 10, 64); err != nil {
			return 0, fmt.Errorf("aws: Incr of %q: %w", key, err)
		}
	}
	if delta != 0 {
		n += delta
		t.writes[key] = strconv.AppendInt(nil, n, 10)
	}
	return n, nil
}

func (t *tx) Enqueue(jobs ...backend.Job) { t.jobs = append(t.jobs, jobs...) }

// errConflict is a lost optimistic race: the transition is run again.
var errConflict = errors.New("aws: concurrent transition")

// commit writes the transition: large values first, then the status item, on the
// condition that it is still at version ver (or absent, for ver 0).
func (t *tx) commit(ver int64) error {
	if err := t.check("run input", t.run.Input); err != nil {
		return err
	}
	if err := t.check("run result", t.run.Result); err != nil {
		return err
	}
	es := make(map[string]entry, len(t.entries)+len(t.writes))
	for k, e := range t.entries {
		es[k] = e
	}
	refs := map[string][]byte{}
	for k, v := range t.writes {
		switch {
		case v == nil:
			delete(es, k)
		case len(v) > t.b.opts.Inline:
			r := newRef()
			refs[r] = v
			es[k] = entry{ref: r}
		default:
			es[k] = entry{val: v}
		}
	}
	if len(refs) > 0 {
		if err := t.b.putValues(t.ctx, t.id, refs); err != nil {
			return err
		}
	}
	t.run.ID = t.id
	t.run.Updated = time.Now()
	item, err := attributevalue.MarshalMap(newStatusItem(&t.run, encodeState(es), ver+1))
	if err != nil {
		return fmt.Errorf("aws: encode run %s: %w", t.id, err)
	}
	in := &dynamodb.PutItemInput{TableName: &t.b.opts.Statuses, Item: item}
	if ver == 0 {
		in.ConditionExpression = awssdk.String("attribute_not_exists(runId)")
	} else {
		in.ConditionExpression = awssdk.String("ver = :v")
		in.ExpressionAttributeValues = map[string]dtypes.AttributeValue{":v": &dtypes.AttributeValueMemberN{Value: strconv.FormatInt(ver, 10)}}
	}
	if _, err := t.b.ddb.PutItem(t.ctx, in); err != nil {
		var ccf *dtypes.ConditionalCheckFailedException
		if errors.As(err, &ccf) || isCode(err, "ConditionalCheckFailedException") {
			return errConflict
		}
		return fmt.Errorf("aws: write run %s: %w", t.id, tooLarge(err))
	}
	return nil
}

// maxTries bounds the optimistic retries of one transition.
const maxTries = 200

// CreateRun writes r's status item unless one exists, then sends init's jobs.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	if err := b.check(); err != nil {
		return false, err
	}
	t := &tx{b: b, ctx: ctx, id: r.ID, run: *r, entries: map[string]entry{}, writes: map[string][]byte{}}
	if err := init(t); err != nil {
		return false, err
	}
	if err := t.commit(0); err != nil {
		if errors.Is(err, errConflict) {
			return false, nil
		}
		return false, err
	}
	return true, b.sendAfterCommit(ctx, r.ID, t.jobs)
}

// sendAfterCommit sends a committed transition's jobs. Should it fail, the reconciler
// enqueues the claimed instances again once the run looks stalled.
func (b *Backend) sendAfterCommit(ctx context.Context, id string, jobs []backend.Job) error {
	if len(jobs) == 0 {
		return nil
	}
	if err := b.send(ctx, b.queueURL, jobs, 0); err != nil {
		return fmt.Errorf("aws: run %s: transition committed, but its jobs were not sent (the reconciler will send them again): %w", id, err)
	}
	return nil
}

// Update runs fn on the run's current state and writes the result conditionally on
// the version read, running fn again when another transition won the race.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	if err := b.check(); err != nil {
		return err
	}
	for try := 0; ; try++ {
		it, err := b.load(ctx, id)
		if err != nil {
			return err
		}
		es, err := decodeState(it.State)
		if err != nil {
			return fmt.Errorf("run %s: %w", id, err)
		}
		t := &tx{b: b, ctx: ctx, id: id, run: *it.run(), entries: es, writes: map[string][]byte{}}
		if err := fn(t); err != nil {
			return err
		}
		err = t.commit(it.Ver)
		if err == nil {
			return b.sendAfterCommit(ctx, id, t.jobs)
		}
		if !errors.Is(err, errConflict) {
			return err
		}
		if try >= maxTries {
			return fmt.Errorf("aws: run %s: %d transitions in a row lost to concurrent ones; giving up", id, try+1)
		}
		if err := jitter(ctx, time.Duration(min(1<<min(try, 7), 100))*time.Millisecond); err != nil {
			return err
		}
	}
}

// Read returns the run and the values of keys: one GetItem, plus one BatchGetItem for
// values stored by reference that are not cached.
func (b *Backend) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	if err := b.check(); err != nil {
		return nil, nil, err
	}
	it, err := b.load(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	vals := map[string][]byte{}
	if len(keys) > 0 {
		es, err := decodeState(it.State)
		if err != nil {
			return nil, nil, fmt.Errorf("run %s: %w", id, err)
		}
		t := &tx{b: b, ctx: ctx, id: id, entries: es}
		vs, err := t.Get(keys...)
		if err != nil {
			return nil, nil, err
		}
		for i, k := range keys {
			if vs[i] != nil {
				vals[k] = vs[i]
			}
		}
	}
	return it.run(), vals, nil
}

// ListRuns lists runs newest first. With a status, it queries the status-lastUpdated
// index (UpdatedBefore as a key condition), page by page; without one, it scans the
// statuses table page by page. Either way it reads every matching run before sorting
// by creation time and applying the limit. The index is eventually consistent on AWS:
// a run listed as stalled may have moved on; the reconciler checks again in its
// transition.
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	names := map[string]string{}
	proj := make([]string, len(runAttrs))
	for i, a := range runAttrs {
		n := "#a" + strconv.Itoa(i)
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
		vals[":lu"] = &dtypes.AttributeValueMemberN{Value: strconv.FormatInt(f.UpdatedBefore.UnixNano(), 10)}
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
	runs := make([]*backend.Run, 0, len(items))
	for _, item := range items {
		var it statusItem
		if err := attributevalue.UnmarshalMap(item, &it); err != nil {
			return nil, fmt.Errorf("aws: decode a run: %w", err)
		}
		runs = append(runs, it.run())
	}
	sort.Slice(runs, func(i, j int) bool {
		if !runs[i].Created.Equal(runs[j].Created) {
			return runs[i].Created.After(runs[j].Created)
		}
		return runs[i].ID > runs[j].ID
	})
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	if len(runs) > limit {
		runs = runs[:limit]
	}
	return runs, nil
}
