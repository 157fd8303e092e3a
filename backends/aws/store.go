package aws

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
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

// coordItem is a run's item in the coordination table: the authoritative, versioned
// run (record, key-value state, version). Every transition is one conditional write of it.
type coordItem struct {
	PK          string `dynamodbav:"pk"`
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
	// Mirrored is when the transition that last decided to write the status mirror ran
	// (Unix nanoseconds); progress refreshes the mirror's lastUpdated at most every touch=.
	Mirrored int64 `dynamodbav:"mirrored,omitempty"`
	// Refs counts the values written to the contexts table (> 0: stamp them with the TTL).
	Refs int64 `dynamodbav:"refs,omitempty"`
	// ExpiresAt is the TTL attribute (Unix seconds), set when the run is final.
	ExpiresAt int64 `dynamodbav:"expiresAt,omitempty"`
	Ver       int64 `dynamodbav:"ver"`
}

// coordAttrs are the coordination item's attributes that a transition sets or removes
// (all but pk and ver).
var coordAttrs = []string{"status", "lastUpdated", "created", "workflow", "wfVersion", "priority", "input",
	"result", "failedNode", "reason", "parent", "parentNode", "metadata", "state", "mirrored", "refs", "expiresAt"}

// runAttrs are the coordination attributes ListRuns reads (everything but the state).
var runAttrs = []string{"pk", "status", "lastUpdated", "created", "workflow", "wfVersion", "priority", "input",
	"result", "failedNode", "reason", "parent", "parentNode", "metadata", "expiresAt", "ver"}

// expired reports whether the item's TTL has passed: DynamoDB deletes such items
// within days, not at once, so readers treat them as deleted.
func expired(expiresAt int64, now time.Time) bool {
	return expiresAt != 0 && expiresAt <= now.Unix()
}

func (it *coordItem) run() *backend.Run {
	r := &backend.Run{ID: it.PK, Workflow: it.Workflow, Version: it.WfVersion, Status: backend.Status(it.Status),
		Priority: it.Priority, Input: it.Input, Result: it.Result, FailedNode: it.FailedNode, Reason: it.Reason,
		Parent: it.Parent, ParentNode: it.ParentNode, Created: time.Unix(0, it.Created), Updated: time.Unix(0, it.LastUpdated)}
	if it.Metadata != "" {
		_ = json.Unmarshal([]byte(it.Metadata), &r.Metadata)
	}
	return r
}

// setRun copies the record r into the item.
func (it *coordItem) setRun(r *backend.Run) {
	it.PK, it.Status, it.LastUpdated, it.Created = r.ID, string(r.Status), r.Updated.UnixNano(), r.Created.UnixNano()
	it.Workflow, it.WfVersion, it.Priority, it.Input, it.Result = r.Workflow, r.Version, r.Priority, r.Input, r.Result
	it.FailedNode, it.Reason, it.Parent, it.ParentNode = r.FailedNode, r.Reason, r.Parent, r.ParentNode
	it.Metadata = ""
	if len(r.Metadata) > 0 {
		md, _ := json.Marshal(r.Metadata)
		it.Metadata = string(md)
	}
}

// statusItem is a run's item in the statuses table: the queryable mirror of the
// coordination item's record, at coordination version MVer.
type statusItem struct {
	RunID       string `dynamodbav:"runId"`
	Status      string `dynamodbav:"status"`
	LastUpdated int64  `dynamodbav:"lastUpdated"` // Unix nanoseconds
	Created     int64  `dynamodbav:"created"`     // Unix nanoseconds
	Workflow    string `dynamodbav:"workflow,omitempty"`
	WfVersion   string `dynamodbav:"wfVersion,omitempty"`
	Result      []byte `dynamodbav:"result,omitempty"`
	FailedNode  string `dynamodbav:"failedNode,omitempty"`
	Reason      string `dynamodbav:"reason,omitempty"`
	Parent      string `dynamodbav:"parent,omitempty"`
	ExpiresAt   int64  `dynamodbav:"expiresAt,omitempty"`
	MVer        int64  `dynamodbav:"mver"`
}

func mirrorOf(it *coordItem) *statusItem {
	return &statusItem{RunID: it.PK, Status: it.Status, LastUpdated: it.LastUpdated, Created: it.Created,
		Workflow: it.Workflow, WfVersion: it.WfVersion, Result: it.Result, FailedNode: it.FailedNode,
		Reason: it.Reason, Parent: it.Parent, ExpiresAt: it.ExpiresAt, MVer: it.Ver}
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

var errCorrupt = errors.New("aws: corrupt run state in the coordination item")

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

func pkKey(id string) map[string]dtypes.AttributeValue {
	return map[string]dtypes.AttributeValue{"pk": &dtypes.AttributeValueMemberS{Value: id}}
}

// load reads a run's coordination item with a strongly consistent read. An item whose
// TTL has passed is not found.
func (b *Backend) load(ctx context.Context, id string) (*coordItem, error) {
	out, err := b.ddb.GetItem(ctx, &dynamodb.GetItemInput{TableName: &b.opts.Coordination, ConsistentRead: awssdk.Bool(true),
		Key: pkKey(id)})
	if err != nil {
		return nil, fmt.Errorf("aws: read run %s: %w", id, err)
	}
	if out.Item == nil {
		return nil, backend.ErrNotFound
	}
	var it coordItem
	if err := attributevalue.UnmarshalMap(out.Item, &it); err != nil {
		return nil, fmt.Errorf("aws: decode run %s: %w", id, err)
	}
	if expired(it.ExpiresAt, time.Now()) {
		b.forget(id)
		return nil, backend.ErrNotFound
	}
	b.remember(&it)
	return &it, nil
}

// maxItems bounds the coordination items cached.
const maxItems = 4096

func (b *Backend) remember(it *coordItem) {
	b.itemMu.Lock()
	defer b.itemMu.Unlock()
	if len(b.items) >= maxItems {
		clear(b.items)
	}
	b.items[it.PK] = it
}

func (b *Backend) forget(id string) {
	b.itemMu.Lock()
	defer b.itemMu.Unlock()
	delete(b.items, id)
}

func (b *Backend) cached(id string) *coordItem {
	b.itemMu.Lock()
	defer b.itemMu.Unlock()
	return b.items[id]
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
	// refsWritten counts the values commit wrote to the contexts table.
	refsWritten int64
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

func isConditionFailed(err error) bool {
	var ccf *dtypes.ConditionalCheckFailedException
	return errors.As(err, &ccf) || isCode(err, "ConditionalCheckFailedException")
}

func num(n int64) *dtypes.AttributeValueMemberN {
	return &dtypes.AttributeValueMemberN{Value: strconv.FormatInt(n, 10)}
}

// commit writes the transition over prev (nil: the run is created): large values first,
// then the coordination item in one conditional write, on the condition that it is
// still at prev's version (or absent, or expired, for a creation). lostRefs counts the
// values that transitions lost to concurrent ones wrote before (so that the TTL stamp
// finds them). It returns the new item and whether the status mirror is due.
func (t *tx) commit(prev *coordItem, lostRefs int64, force bool, before func(it *coordItem) error) (*coordItem, bool, error) {
	if err := t.check("run input", t.run.Input); err != nil {
		return nil, false, err
	}
	if err := t.check("run result", t.run.Result); err != nil {
		return nil, false, err
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
			return nil, false, err
		}
		t.refsWritten = int64(len(refs))
	}
	now := time.Now()
	t.run.ID = t.id
	t.run.Updated = now
	it := &coordItem{}
	if prev != nil {
		*it = *prev
	}
	it.setRun(&t.run)
	it.State = encodeState(es)
	it.Refs += t.refsWritten + lostRefs
	switch {
	case !t.run.Status.Final():
		it.ExpiresAt = 0
	case prev == nil || !backend.Status(prev.Status).Final() || prev.ExpiresAt == 0:
		it.ExpiresAt = 0
		if t.b.opts.TTL > 0 {
			it.ExpiresAt = now.Add(t.b.opts.TTL).Unix()
		}
	}
	mirror := force || prev == nil || prev.Status != it.Status || !bytes.Equal(prev.Result, it.Result) ||
		prev.FailedNode != it.FailedNode || prev.Reason != it.Reason || prev.ExpiresAt != it.ExpiresAt ||
		now.UnixNano()-prev.Mirrored >= int64(t.b.opts.Touch)
	if mirror {
		it.Mirrored = now.UnixNano()
	}
	if prev == nil {
		it.Ver = 1
		item, err := attributevalue.MarshalMap(it)
		if err != nil {
			return nil, false, fmt.Errorf("aws: encode run %s: %w", t.id, err)
		}
		_, err = t.b.ddb.PutItem(t.ctx, &dynamodb.PutItemInput{TableName: &t.b.opts.Coordination, Item: item,
			ConditionExpression:       awssdk.String("attribute_not_exists(pk) OR expiresAt <= :now"),
			ExpressionAttributeValues: map[string]dtypes.AttributeValue{":now": num(now.Unix())}})
		if err != nil {
			if isConditionFailed(err) {
				return nil, false, errConflict
			}
			return nil, false, fmt.Errorf("aws: write run %s: %w", t.id, tooLarge(err))
		}
		return it, true, nil
	}
	it.Ver = prev.Ver
	if before != nil {
		if err := before(it); err != nil {
			return nil, false, err
		}
	}
	item, err := attributevalue.MarshalMap(it)
	if err != nil {
		return nil, false, fmt.Errorf("aws: encode run %s: %w", t.id, err)
	}
	old, err := attributevalue.MarshalMap(prev)
	if err != nil {
		return nil, false, fmt.Errorf("aws: encode run %s: %w", t.id, err)
	}
	// The write names only the attributes that differ from prev's: the condition on
	// the version makes prev exactly what it changes.
	names := map[string]string{}
	vals := map[string]dtypes.AttributeValue{":one": num(1), ":v": num(prev.Ver), ":c": num(prev.Created), ":now": num(now.Unix())}
	var set, remove []string
	for i, a := range coordAttrs {
		n := "#a" + strconv.Itoa(i)
		v, ok := item[a]
		o, had := old[a]
		switch {
		case ok && !(had && reflect.DeepEqual(v, o)):
			names[n] = a
			vals[":a"+strconv.Itoa(i)] = v
			set = append(set, n+" = :a"+strconv.Itoa(i))
		case !ok && had:
			names[n] = a
			remove = append(remove, n)
		}
	}
	expr := "ADD ver :one"
	if len(set) > 0 {
		expr = "SET " + strings.Join(set, ", ") + " " + expr
	}
	if len(remove) > 0 {
		expr += " REMOVE " + strings.Join(remove, ", ")
	}
	if len(names) == 0 {
		names = nil // DynamoDB refuses an empty map
	}
	_, err = t.b.ddb.UpdateItem(t.ctx, &dynamodb.UpdateItemInput{TableName: &t.b.opts.Coordination, Key: pkKey(t.id),
		UpdateExpression: &expr, ConditionExpression: awssdk.String("ver = :v AND created = :c AND (attribute_not_exists(expiresAt) OR expiresAt > :now)"),
		ExpressionAttributeNames: names, ExpressionAttributeValues: vals})
	if err != nil {
		if isConditionFailed(err) {
			return nil, false, errConflict
		}
		return nil, false, fmt.Errorf("aws: write run %s: %w", t.id, tooLarge(err))
	}
	it.Ver = prev.Ver + 1
	return it, mirror, nil
}

// afterCommitTimeout bounds the writes that follow a committed transition.
const afterCommitTimeout = 30 * time.Second

// maxTries bounds the optimistic retries of one transition.
const maxTries = 200

// CreateRun writes r's coordination item unless one exists, then its status mirror,
// then sends init's jobs. When the run exists, it repairs the run's mirror (a crash of
// an earlier CreateRun between the two writes leaves none) and reports false.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	if err := b.check(); err != nil {
		return false, err
	}
	t := &tx{b: b, ctx: ctx, id: r.ID, run: *r, entries: map[string]entry{}, writes: map[string][]byte{}}
	if err := init(t); err != nil {
		return false, err
	}
	it, _, err := t.commit(nil, 0, false, nil)
	if err != nil {
		if errors.Is(err, errConflict) {
			return false, b.repairMirror(ctx, r.ID)
		}
		return false, err
	}
	b.remember(it)
	return true, b.afterCommit(ctx, nil, it, true, t.jobs)
}

// repairMirror writes the status mirror of run id from its coordination item, unless
// the mirror is as new.
func (b *Backend) repairMirror(ctx context.Context, id string) error {
	it, err := b.load(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return b.putMirror(ctx, mirrorOf(it), mirrorNewerOrEqual)
}

// afterCommit does what follows a committed transition from prev to it: the status
// mirror (when due), the transition's jobs, and the TTL stamp of the run's contexts
// items when the run became final (or running again). The jobs are sent even when the
// mirror write fails; the error reports it.
func (b *Backend) afterCommit(ctx context.Context, prev, it *coordItem, mirror bool, jobs []backend.Job) error {
	// The transition is done: its follow-ups are not abandoned when the caller's ctx
	// ends (a worker shutting down), only bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterCommitTimeout)
	defer cancel()
	var errs []error
	if mirror {
		cond := mirrorNewer
		if prev == nil {
			cond = mirrorCreated
		}
		if err := b.putMirror(ctx, mirrorOf(it), cond); err != nil {
			errs = append(errs, fmt.Errorf("aws: run %s: transition committed, but its status mirror was not written (ListRuns repairs it): %w", it.PK, err))
		}
	}
	if len(jobs) > 0 {
		if err := b.send(ctx, b.queueURL, jobs, 0); err != nil {
			errs = append(errs, fmt.Errorf("aws: run %s: transition committed, but its jobs were not sent (the reconciler will send them again): %w", it.PK, err))
		}
	}
	if it.Refs > 0 && ((prev == nil && it.ExpiresAt != 0) || (prev != nil && prev.ExpiresAt != it.ExpiresAt)) {
		// Best effort: ExpireRuns deletes what this misses.
		_ = b.stampContexts(ctx, it.PK, it.ExpiresAt)
	}
	return errors.Join(errs...)
}

// Mirror write conditions: putMirror replaces only an older mirror.
const (
	// mirrorNewer: absent, of an earlier run with the same id, or at a lower version.
	mirrorNewer = "attribute_not_exists(runId) OR created < :c OR (created = :c AND mver < :v)"
	// mirrorNewerOrEqual: the same, or at the same version (an early mirror, a repair).
	mirrorNewerOrEqual = "attribute_not_exists(runId) OR created < :c OR (created = :c AND mver <= :v)"
	// mirrorCreated: a run just created replaces any mirror of another run with its id.
	mirrorCreated = "attribute_not_exists(runId) OR created <> :c"
)

// putMirror writes a status mirror item on condition cond (one of the mirror…
// conditions), so that a late write never replaces a newer mirror. A failed condition
// is not an error: a newer mirror is in place.
func (b *Backend) putMirror(ctx context.Context, m *statusItem, cond string) error {
	item, err := attributevalue.MarshalMap(m)
	if err != nil {
		return fmt.Errorf("aws: encode the status of run %s: %w", m.RunID, err)
	}
	vals := map[string]dtypes.AttributeValue{":c": num(m.Created)}
	if cond != mirrorCreated {
		vals[":v"] = num(m.MVer)
	}
	_, err = b.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: &b.opts.Statuses, Item: item,
		ConditionExpression: &cond, ExpressionAttributeValues: vals})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("aws: write the status of run %s: %w", m.RunID, tooLarge(err))
	}
	return nil
}

// repairMirrorOver replaces the mirror observed (created and mver as read) with the
// mirror of it, unless the mirror changed since it was read.
func (b *Backend) repairMirrorOver(ctx context.Context, it *coordItem, observed *statusItem) error {
	item, err := attributevalue.MarshalMap(mirrorOf(it))
	if err != nil {
		return fmt.Errorf("aws: encode the status of run %s: %w", it.PK, err)
	}
	_, err = b.ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: &b.opts.Statuses, Item: item,
		ConditionExpression:       awssdk.String("created = :oc AND mver = :ov"),
		ExpressionAttributeValues: map[string]dtypes.AttributeValue{":oc": num(observed.Created), ":ov": num(observed.MVer)}})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("aws: repair the status of run %s: %w", it.PK, tooLarge(err))
	}
	return nil
}

// stampContexts sets (expiresAt > 0) or removes the TTL attribute of the run's items in
// the contexts table.
func (b *Backend) stampContexts(ctx context.Context, id string, expiresAt int64) error {
	return b.eachRef(ctx, id, func(key map[string]dtypes.AttributeValue) error {
		in := &dynamodb.UpdateItemInput{TableName: &b.opts.Contexts, Key: key,
			ConditionExpression: awssdk.String("attribute_exists(runId)")}
		if expiresAt > 0 {
			in.UpdateExpression = awssdk.String("SET expiresAt = :e")
			in.ExpressionAttributeValues = map[string]dtypes.AttributeValue{":e": num(expiresAt)}
		} else {
			in.UpdateExpression = awssdk.String("REMOVE expiresAt")
		}
		if _, err := b.ddb.UpdateItem(ctx, in); err != nil && !isConditionFailed(err) {
			return fmt.Errorf("aws: set the TTL of a value of run %s: %w", id, err)
		}
		return nil
	})
}

// eachRef calls fn with the key of each of the run's items in the contexts table.
func (b *Backend) eachRef(ctx context.Context, id string, fn func(key map[string]dtypes.AttributeValue) error) error {
	p := dynamodb.NewQueryPaginator(b.ddb, &dynamodb.QueryInput{TableName: &b.opts.Contexts,
		KeyConditionExpression:    awssdk.String("runId = :id"),
		ExpressionAttributeValues: map[string]dtypes.AttributeValue{":id": &dtypes.AttributeValueMemberS{Value: id}},
		ProjectionExpression:      awssdk.String("runId, #r"), ExpressionAttributeNames: map[string]string{"#r": "ref"},
		ConsistentRead: awssdk.Bool(true)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("aws: list the values of run %s: %w", id, err)
		}
		for _, item := range out.Items {
			if err := fn(item); err != nil {
				return err
			}
		}
	}
	return nil
}

// Update runs fn on the run's current state and writes the result conditionally on
// the version read, running fn again when another transition won the race.
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	if err := b.check(); err != nil {
		return err
	}
	var lostRefs int64
	force := false // a status change's early mirror was written: the mirror is due whatever the retry changes
	done := false
	defer func() {
		if force && !done {
			// An early mirror of a transition that never committed: put back the
			// truth's (best effort; ListRuns repairs it too).
			_ = b.repairMirror(context.WithoutCancel(ctx), id)
		}
	}()
	for try := 0; ; try++ {
		var prev *coordItem
		if try == 0 {
			prev = b.cached(id)
		}
		fromCache := prev != nil
		if !fromCache {
			var err error
			if prev, err = b.load(ctx, id); err != nil {
				return err
			}
		}
		es, err := decodeState(prev.State)
		if err != nil {
			return fmt.Errorf("run %s: %w", id, err)
		}
		t := &tx{b: b, ctx: ctx, id: id, run: *prev.run(), entries: es, writes: map[string][]byte{}}
		if err := fn(t); err != nil {
			if fromCache {
				continue // the cached item may be stale: decide on a fresh read
			}
			return err
		}
		var pre func(it *coordItem) error
		if t.run.Status != backend.Status(prev.Status) {
			// A status change: the mirror says so first, at prev's version, so that
			// whoever reads the new status from the coordination item finds the run
			// under that status in ListRuns, and so that no crash can hide a rerun's
			// running run from the reconciler. The mirror write after the commit
			// replaces it; a lost race is repaired (force, below, and ListRuns).
			pre = func(it *coordItem) error {
				force = true // set before the write: its outcome is unknown on error
				m := mirrorOf(it)
				m.MVer = prev.Ver
				return b.putMirror(ctx, m, mirrorNewerOrEqual)
			}
		}
		it, mirror, err := t.commit(prev, lostRefs, force, pre)
		if err == nil {
			done = true
			b.remember(it)
			return b.afterCommit(ctx, prev, it, mirror, t.jobs)
		}
		b.forget(id)
		if !errors.Is(err, errConflict) {
			return err
		}
		lostRefs += t.refsWritten
		if fromCache {
			continue // a stale cached item: read it now, at once
		}
		if try >= maxTries {
			return fmt.Errorf("aws: run %s: %d transitions in a row lost to concurrent ones; giving up", id, try+1)
		}
		if err := jitter(ctx, time.Duration(min(1<<min(try, 7), 100))*time.Millisecond); err != nil {
			return err
		}
	}
}

// Read returns the run and the values of keys from its coordination item (one strongly
// consistent GetItem), plus one BatchGetItem for values stored by reference that are
// not cached.
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
