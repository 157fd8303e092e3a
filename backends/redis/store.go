package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/runtime/backend"
)

type zrange = goredis.ZRangeBy

func isNil(err error) bool { return errors.Is(err, goredis.Nil) }

// maxAttempts bounds how often one batch of transitions is retried after conflicts.
const maxAttempts = 100

// field is the hash field of a run's state key k; the hash's own fields ("rec", "rv",
// "u", "sv") have no dot, so no state key can collide with them.
func field(k string) string { return "." + k }

// CreateRun creates r and runs init in the same transition, unless a run with r.ID
// exists.
func (b *Backend) CreateRun(ctx context.Context, r *backend.Run, init func(backend.Tx) error) (bool, error) {
	if b.closed.Load() {
		return false, errClosed
	}
	if r.ID == "" {
		return false, errors.New("redis: create run: empty run id")
	}
	if len(r.Input) > b.opts.MaxValue {
		return false, fmt.Errorf("redis: run %s: input of %d bytes is over the %d-byte limit: %w", r.ID, len(r.Input), b.opts.MaxValue, backend.ErrTooLarge)
	}
	e := &runEntry{}
	t := newTx(e, r, b.opts.MaxValue, true)
	if err := init(t); err != nil {
		return false, err
	}
	if t.err != nil {
		return false, t.err
	}
	if err := b.checkRecord(&t.rec); err != nil {
		return false, err
	}
	old := &backend.Run{ID: r.ID}
	res, err := b.commit(ctx, t, old, nil, 0, 'c')
	if err != nil {
		return false, err
	}
	switch res.code {
	case 2:
		return false, nil
	case 1:
		b.cache.drop(r.ID) // what an earlier run of this id left
		b.remember(r.ID, b.cache.entry(r.ID), t, res)
		return true, nil
	}
	return false, fmt.Errorf("redis: create run %s: unexpected reply %d", r.ID, res.code)
}

// checkRecord checks the sizes of a record's values.
func (b *Backend) checkRecord(r *backend.Run) error {
	if len(r.Result) > b.opts.MaxValue {
		return fmt.Errorf("redis: run %s: result of %d bytes is over the %d-byte limit: %w", r.ID, len(r.Result), b.opts.MaxValue, backend.ErrTooLarge)
	}
	return nil
}

// runQueue serialises the Updates of one run in this process: the first caller leads,
// the others queue; the leader commits everything queued as one batch, then hands the
// lead to the first caller that queued since.
type runQueue struct {
	pending []*update
	busy    bool
}

type update struct {
	ctx  context.Context
	fn   func(backend.Tx) error
	err  error
	lead chan bool // receives false when done, true when this caller is to lead
}

// Update runs fn as one atomic transition of run id. fn runs on what this process knows
// of the run and may run again after a conflict (see the package documentation).
func (b *Backend) Update(ctx context.Context, id string, fn func(backend.Tx) error) error {
	if b.closed.Load() {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	u := &update{ctx: ctx, fn: fn, lead: make(chan bool, 1)}
	b.runsMu.Lock()
	q := b.runs[id]
	if q == nil {
		q = &runQueue{}
		b.runs[id] = q
	}
	q.pending = append(q.pending, u)
	if q.busy {
		b.runsMu.Unlock()
		if lead := <-u.lead; !lead {
			return u.err
		}
		b.runsMu.Lock()
	}
	q.busy = true
	batch := q.pending
	q.pending = nil
	b.runsMu.Unlock()

	live := batch[:0:0]
	for _, x := range batch {
		if err := x.ctx.Err(); err != nil {
			x.err = err
		} else {
			live = append(live, x)
		}
	}
	if len(live) > 0 {
		b.commitBatch(id, live)
	}
	for _, x := range batch {
		if x != u {
			x.lead <- false
		}
	}

	b.runsMu.Lock()
	if len(q.pending) > 0 {
		next := q.pending[0]
		b.runsMu.Unlock()
		next.lead <- true
	} else {
		q.busy = false
		delete(b.runs, id)
		b.runsMu.Unlock()
	}
	return u.err
}

// commitBatch runs the transitions of batch on one tx, each undone alone when it fails,
// and commits the tx, again until it commits without conflict. It sets each update's
// err.
func (b *Backend) commitBatch(id string, batch []*update) {
	ctx := context.Background() // the callers' contexts were checked; a commit in flight finishes
	e := b.cache.entry(id)
	fail := func(err error) {
		for _, u := range batch {
			u.err = err
		}
	}
	for attempt := 1; ; attempt++ {
		rec, recData, rv, _ := e.record()
		if rec == nil {
			if err := b.load(ctx, id, e); err != nil {
				fail(err)
				return
			}
			rec, recData, rv, _ = e.record()
		}
		rec.ID = id
		old := *rec
		t := newTx(e, rec, b.opts.MaxValue, false)
		for _, u := range batch {
			sp := t.save()
			err := u.fn(t)
			if err == nil {
				err = t.err
			}
			if err == nil {
				err = b.checkRecord(&t.rec)
			}
			if u.err = err; err != nil {
				t.rollback(sp)
			}
		}
		// Commit even when every transition failed: their errors may come from stale
		// knowledge, so what they read is checked (the script writes nothing then).
		res, err := b.commit(ctx, t, &old, recData, rv, 'u')
		if err != nil {
			fail(err)
			return
		}
		switch res.code {
		case 1:
			b.remember(id, e, t, res)
			return
		case 3:
			b.cache.drop(id)
			fail(fmt.Errorf("redis: run %s: %w", id, backend.ErrNotFound))
			return
		case 0:
			if err := b.refresh(id, e, t, res); err != nil {
				fail(err)
				return
			}
		default:
			fail(fmt.Errorf("redis: run %s: commit: unexpected reply %d", id, res.code))
			return
		}
		if attempt == maxAttempts {
			fail(fmt.Errorf("redis: run %s: %d transitions conflicted with other processes %d times in a row", id, len(batch), attempt))
			return
		}
		if attempt >= 3 {
			time.Sleep(time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond))))
		}
	}
}

// load reads run id's record into e.
func (b *Backend) load(ctx context.Context, id string, e *runEntry) error {
	v, err := b.pipe.do(ctx, "hmget", b.k.run(id), "rec", "rv", "u")
	if err != nil {
		return fmt.Errorf("redis: read run %s: %w", id, err)
	}
	vals, _ := v.([]any)
	if len(vals) != 3 || vals[0] == nil {
		return fmt.Errorf("redis: run %s: %w", id, backend.ErrNotFound)
	}
	_, err = b.storeRecord(id, e, vals[0], vals[1], vals[2])
	return err
}

// storeRecord decodes a record read from Redis and stores it in e.
func (b *Backend) storeRecord(id string, e *runEntry, rec, rv, u any) (*backend.Run, error) {
	s, _ := rec.(string)
	data := []byte(s)
	r, err := decodeRecord(id, data)
	if err != nil {
		return nil, err
	}
	updated := toInt(u)
	r.Updated = time.UnixMicro(updated)
	cp := *r
	e.setRecord(toInt(rv), &cp, data, updated)
	return r, nil
}

// commitResult is the commit script's reply.
type commitResult struct {
	code int64
	rv   int64
	sv   int64 // the run's state version after the commit
	vals []any // on a conflict: record version, record, updated, read values
	now  int64 // unix µs: the run's Updated when the commit applied
}

// commit sends t to the commit script: mode 'c' creates the run, 'u' updates it if
// what t read is unchanged and the record is still at version rv.
func (b *Backend) commit(ctx context.Context, t *tx, old *backend.Run, oldData []byte, rv int64, mode byte) (commitResult, error) {
	id := old.ID
	newRec := &t.rec
	newRec.ID = id
	var recArg []byte
	if data := encodeRecord(newRec); !bytes.Equal(data, oldData) {
		recArg = data
	}
	if mode == 'c' && recArg == nil {
		recArg = encodeRecord(newRec)
	}
	nowT := time.Now()
	now, nowUs := nowT.UnixMilli(), nowT.UnixMicro()
	var ttl int64
	if b.opts.TTL > 0 {
		ttl = b.opts.TTL.Milliseconds()
	}
	nSets, nDels := 0, 0
	for _, k := range t.writeKeys {
		if t.writes[k].del {
			nDels++
		} else {
			nSets++
		}
	}
	nReads := 0
	if mode == 'u' {
		nReads = len(t.readKeys)
	}
	due := 0
	for i := range t.jobs {
		if !t.jobs[i].NotBefore.After(nowT) {
			due++
		}
	}
	pop, leaseFor := b.handoff.reserve(due)
	handed := 0
	defer func() { b.handoff.deliver(pop-handed, nil) }()
	acked := b.pendingAcks() // acks ride along
	args := make([]any, 0, 21+3*nReads+2*nSets+nDels+3*len(t.jobs)+len(acked))
	args = append(args, string(mode), now, rv, id, b.k.wake, b.k.done, ttl,
		string(old.Status), string(newRec.Status), newRec.Created.UnixMilli(), recArg, nowUs,
		nReads, nSets, nDels, len(t.jobs), pop, max64(leaseFor.Milliseconds(), 1),
		b.k.prefix+"run:{", snapshotFields, len(acked))
	if mode == 'u' {
		for _, k := range t.readKeys {
			r := t.reads[k]
			switch {
			case !r.ok:
				args = append(args, field(k), "a", "")
			case r.valueUsed:
				args = append(args, field(k), "v", r.v)
			default:
				args = append(args, field(k), "e", "")
			}
		}
	}
	for _, k := range t.writeKeys {
		if w := t.writes[k]; !w.del {
			args = append(args, field(k), w.v)
		}
	}
	for _, k := range t.writeKeys {
		if t.writes[k].del {
			args = append(args, field(k))
		}
	}
	args = b.pushArgs(args, t.jobs)
	for _, l := range acked {
		args = append(args, l.member)
	}
	keys := []string{b.k.run(id), b.k.ready, b.k.delayed, b.k.waiting,
		b.k.running, b.k.progress, b.k.status(old.Status), b.k.status(newRec.Status),
		b.k.leased, b.k.dead}
	v, err := b.pipe.eval(ctx, commitScript, keys, args)
	if err != nil {
		b.untakeAcks(acked)
		return commitResult{}, fmt.Errorf("%w (run %s)", err, id)
	}
	vals, _ := v.([]any)
	if len(vals) == 0 {
		return commitResult{}, fmt.Errorf("redis: run %s: commit: unexpected reply %v", id, v)
	}
	res := commitResult{code: toInt(vals[0]), now: nowUs}
	switch res.code {
	case 1:
		if len(vals) > 2 {
			res.rv, res.sv = toInt(vals[1]), toInt(vals[2])
		}
		if len(vals) > 3 {
			ds, err := b.leased(ctx, vals[3:])
			b.handoff.deliver(pop, ds)
			handed = pop
			if err != nil {
				return res, err
			}
		}
	case 0:
		res.vals = vals[1:]
	}
	return res, nil
}

// remember updates e after t committed: what t read is current, what it wrote is
// the new value.
func (b *Backend) remember(id string, e *runEntry, t *tx, res commitResult) {
	if t.rec.Status.Final() {
		// Keep only the state version, so that no older snapshot is taken for it.
		e.mu.Lock()
		e.seen(res.sv)
		e.rec, e.recData, e.vals, e.snap = nil, nil, nil, nil
		e.mu.Unlock()
		return
	}
	rec := t.rec
	rec.Updated = time.UnixMicro(res.now)
	data := encodeRecord(&rec)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen(res.sv)
	for _, k := range t.readKeys {
		r := t.reads[k]
		e.learn(k, known{v: r.v, ok: r.ok})
	}
	for _, k := range t.writeKeys {
		w := t.writes[k]
		e.learn(k, known{v: w.v, ok: !w.del})
	}
	if e.rec == nil || res.rv >= e.rv {
		e.rec, e.recData, e.rv = &rec, data, res.rv
	}
	e.updated = max(e.updated, res.now)
}

// refresh stores in e the current values a conflicting commit returned.
func (b *Backend) refresh(id string, e *runEntry, t *tx, res commitResult) error {
	vals := res.vals
	if len(vals) != 3+len(t.readKeys) {
		return fmt.Errorf("redis: run %s: commit: conflict reply of %d values for %d reads", id, len(vals), len(t.readKeys))
	}
	if vals[1] != nil {
		if _, err := b.storeRecord(id, e, vals[1], vals[0], vals[2]); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, k := range t.readKeys {
		if s, ok := vals[3+i].(string); ok {
			e.learn(k, known{v: []byte(s), ok: true})
		} else {
			e.learn(k, known{})
		}
	}
	return nil
}

// snapshotTTL is how long a run's snapshot from Dequeue serves Reads of its keys.
const snapshotTTL = 250 * time.Millisecond

// snapshot stores what a Dequeue returned of run id: flat field-value pairs of its
// hash, or only the version of its state when the hash was too large, unless this
// process already saw a later version.
func (b *Backend) snapshot(id string, v any) {
	flat, ok := v.([]any)
	if !ok { // the state version alone: older snapshots are stale
		if e := b.cache.peek(id); e != nil {
			e.mu.Lock()
			e.seen(toInt(v))
			e.mu.Unlock()
		}
		return
	}
	var rec, rv, u, sv any
	kv := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		f, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		switch {
		case f == "rec":
			rec = v
		case f == "rv":
			rv = v
		case f == "u":
			u = v
		case f == "sv":
			sv = v
		case len(f) > 0 && f[0] == '.':
			kv[f[1:]] = v
		}
	}
	if rec == nil || peekStatus(rec) != backend.Running {
		return
	}
	s, _ := rec.(string)
	r, err := decodeRecord(id, []byte(s))
	if err != nil {
		return
	}
	updated, version, state := toInt(u), toInt(rv), toInt(sv)
	r.Updated = time.UnixMicro(updated)
	e := b.cache.entry(id)
	e.mu.Lock()
	defer e.mu.Unlock()
	if state < e.snapSV || (state == e.snapSV && e.snapRec != nil) {
		return // older than, or the same as, what this process knows
	}
	cp := *r
	if e.rec == nil || version >= e.rv {
		e.rec, e.recData, e.rv = &cp, []byte(s), version
		e.updated = max(e.updated, updated)
	}
	e.vals = nil
	e.snap, e.snapRec, e.snapAt, e.snapSV = kv, r, time.Now(), state
}

// fromSnapshot serves a Read from the run's snapshot, if it is fresh.
func (b *Backend) fromSnapshot(id string, keys []string) (*backend.Run, map[string][]byte, bool) {
	e := b.cache.peek(id)
	if e == nil {
		return nil, nil, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.snapRec == nil || time.Since(e.snapAt) > snapshotTTL {
		return nil, nil, false
	}
	out := make(map[string][]byte, len(keys))
	for _, k := range keys {
		if v, ok := e.snap[k]; ok {
			out[k] = []byte(v)
		}
	}
	r := *e.snapRec
	return &r, out, true
}

// Read returns the run and the values of the given keys (absent keys are left out).
// A Read of keys shortly after a Dequeue returned a job of the run is answered from
// the snapshot that came with the job, unless this process changed the run since.
func (b *Backend) Read(ctx context.Context, id string, keys ...string) (*backend.Run, map[string][]byte, error) {
	if b.closed.Load() {
		return nil, nil, errClosed
	}
	if len(keys) > 0 {
		if r, out, ok := b.fromSnapshot(id, keys); ok {
			return r, out, nil
		}
	}
	args := make([]any, 0, 5+len(keys))
	args = append(args, "hmget", b.k.run(id), "rec", "rv", "u")
	for _, k := range keys {
		args = append(args, field(k))
	}
	v, err := b.pipe.do(ctx, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("redis: read run %s: %w", id, err)
	}
	vals, _ := v.([]any)
	if len(vals) != 3+len(keys) {
		return nil, nil, fmt.Errorf("redis: read run %s: unexpected reply", id)
	}
	if vals[0] == nil {
		return nil, nil, fmt.Errorf("redis: run %s: %w", id, backend.ErrNotFound)
	}
	out := make(map[string][]byte, len(keys))
	for i, k := range keys {
		if s, ok := vals[3+i].(string); ok {
			out[k] = []byte(s)
		}
	}
	status := peekStatus(vals[0])
	if status == backend.Running {
		e := b.cache.entry(id)
		r, err := b.storeRecord(id, e, vals[0], vals[1], vals[2])
		if err != nil {
			return nil, nil, err
		}
		e.mu.Lock()
		for k, v := range out {
			e.learn(k, known{v: v, ok: true})
		}
		for _, k := range keys {
			if _, ok := out[k]; !ok {
				e.learn(k, known{})
			}
		}
		e.mu.Unlock()
		return r, out, nil
	}
	s, _ := vals[0].(string)
	r, err := decodeRecord(id, []byte(s))
	if err != nil {
		return nil, nil, err
	}
	r.Updated = time.UnixMicro(toInt(vals[2]))
	return r, out, nil
}

// peekStatus reads the status from an encoded record without decoding the rest.
func peekStatus(rec any) backend.Status {
	s, _ := rec.(string)
	if len(s) < 1 || s[0] != recordFormat {
		return ""
	}
	r := reader{b: []byte(s[1:])}
	r.str()
	r.str()
	return backend.Status(r.str())
}

// ListRuns lists runs matching f, newest first. Runs come from the status indexes:
// running runs by creation time; running runs not updated since f.UpdatedBefore from
// the progress index (what the reconciler asks); finished runs among those that
// finished last.
func (b *Backend) ListRuns(ctx context.Context, f backend.RunFilter) ([]*backend.Run, error) {
	if b.closed.Load() {
		return nil, errClosed
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	// Run.Updated is kept to the microsecond.
	match := func(r *backend.Run) bool {
		return (f.Status == "" || r.Status == f.Status) && (f.Workflow == "" || r.Workflow == f.Workflow) &&
			(f.UpdatedBefore.IsZero() || r.Updated.UnixMicro() < f.UpdatedBefore.UnixMicro())
	}
	var out []*backend.Run
	if f.Status == backend.Running && !f.UpdatedBefore.IsZero() {
		// Every run whose score is below the cutoff, oldest progress first; the score
		// lags the run's "u" by less than a second, which match checks.
		max := "(" + strconv.FormatInt(f.UpdatedBefore.UnixMilli()+1000, 10)
		rs, err := b.scan(ctx, b.k.progress, false, "-inf", max, 100000, match)
		if err != nil {
			return nil, err
		}
		out = rs
	} else {
		statuses := []backend.Status{backend.Running, backend.Completed, backend.Failed, backend.Cancelled}
		if f.Status != "" {
			statuses = []backend.Status{f.Status}
		}
		for _, s := range statuses {
			hi := "+inf"
			if s != backend.Running && !f.UpdatedBefore.IsZero() {
				hi = "(" + strconv.FormatInt(f.UpdatedBefore.UnixMilli()+1, 10) // scores are in ms

			}
			rs, err := b.scan(ctx, b.k.status(s), true, "-inf", hi, limit, match)
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
		}
	}
	slices.SortFunc(out, func(a, c *backend.Run) int {
		if n := c.Created.Compare(a.Created); n != 0 {
			return n
		}
		return cmpStrings(c.ID, a.ID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// scan reads the runs of index key with scores in [lo, hi], newest first when rev,
// a page at a time, until want runs match. Entries of runs that expired are removed.
func (b *Backend) scan(ctx context.Context, key string, rev bool, lo, hi string, want int, match func(*backend.Run) bool) ([]*backend.Run, error) {
	const page = 200
	var out []*backend.Run
	for offset := 0; len(out) < want; offset += page {
		var ids []string
		var err error
		if rev {
			ids, err = b.rdb.ZRevRangeByScore(ctx, key, &zrange{Min: lo, Max: hi, Offset: int64(offset), Count: page}).Result()
		} else {
			ids, err = b.rdb.ZRangeByScore(ctx, key, &zrange{Min: lo, Max: hi, Offset: int64(offset), Count: page}).Result()
		}
		if err != nil {
			return nil, fmt.Errorf("redis: list runs: %w", err)
		}
		runs, gone, err := b.records(ctx, ids)
		if err != nil {
			return nil, err
		}
		if len(gone) > 0 {
			b.rdb.ZRem(ctx, key, gone...)
			offset -= len(gone)
		}
		for _, r := range runs {
			if match(r) {
				out = append(out, r)
			}
		}
		if len(ids) < page {
			break
		}
	}
	return out, nil
}

// records reads the records of runs ids in one round trip; gone lists those that no
// longer exist.
func (b *Backend) records(ctx context.Context, ids []string) ([]*backend.Run, []any, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	pl := b.rdb.Pipeline()
	for _, id := range ids {
		pl.HMGet(ctx, b.k.run(id), "rec", "u")
	}
	cmds, err := pl.Exec(ctx)
	if err != nil && !isNil(err) {
		return nil, nil, fmt.Errorf("redis: list runs: %w", err)
	}
	var runs []*backend.Run
	var gone []any
	for i, c := range cmds {
		sc, _ := c.(*goredis.SliceCmd)
		var vals []any
		if sc != nil {
			vals = sc.Val()
		}
		if len(vals) != 2 || vals[0] == nil {
			gone = append(gone, ids[i])
			continue
		}
		s, _ := vals[0].(string)
		r, err := decodeRecord(ids[i], []byte(s))
		if err != nil {
			return nil, nil, err
		}
		r.Updated = time.UnixMicro(toInt(vals[1]))
		runs = append(runs, r)
	}
	return runs, gone, nil
}

// ExpireRuns deletes every finished run last updated before before, except the
// finished child runs of subflows whose parent still runs (backend.Expirer). Redis
// also expires finished runs by itself, ttl after they end.
func (b *Backend) ExpireRuns(ctx context.Context, before time.Time) (int, error) {
	if b.closed.Load() {
		return 0, errClosed
	}
	n := 0
	for _, s := range []backend.Status{backend.Completed, backend.Failed, backend.Cancelled} {
		key := b.k.status(s)
		hi := "(" + strconv.FormatInt(before.UnixMilli()+1, 10) // scores are in ms
		runs, err := b.scan(ctx, key, false, "-inf", hi, 1<<30, func(r *backend.Run) bool {
			return r.Status.Final() && r.Updated.Before(before)
		})
		if err != nil {
			return n, err
		}
		for _, r := range runs {
			if r.Parent != "" {
				p, _, err := b.Read(ctx, r.Parent)
				if err == nil && p.Status == backend.Running {
					continue
				}
				if err != nil && !errors.Is(err, backend.ErrNotFound) {
					return n, err
				}
			}
			rv, err := b.rdb.HGet(ctx, b.k.run(r.ID), "rv").Result()
			if isNil(err) {
				continue
			}
			if err != nil {
				return n, fmt.Errorf("redis: expire run %s: %w", r.ID, err)
			}
			v, err := b.pipe.eval(ctx, expireScript, []string{b.k.run(r.ID), key}, []any{r.ID, rv})
			if err != nil {
				return n, fmt.Errorf("redis: expire run %s: %w", r.ID, err)
			}
			if toInt(v) == 1 {
				n++
			}
		}
	}
	return n, nil
}
