package redis

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// runEntry is what this process knows of one run: the record as of a record version,
// and the values of the keys it has read or written. Knowledge may be stale; the
// commit script checks it, so it only decides how often a transition is retried.
type runEntry struct {
	mu      sync.Mutex
	rec     *backend.Run // nil until loaded
	recData []byte       // rec encoded, to tell whether a transition changed it
	rv      int64        // the record's version
	updated int64        // unix µs of the run's last change
	// vals are the keys learned since the last snapshot, which holds the others (a key
	// in neither is not known, and taken for absent).
	vals map[string]known

	// snap is the whole run as a Dequeue of this process returned it with a job, at
	// snapAt, as of state version snapSV. While snapRec is set, Reads of the job's
	// inputs use it; a later version seen (a commit of this process, a Dequeue that
	// returned only the version) retires it (snapRec nil), and an older snapshot is
	// never taken. Retired, it still serves as knowledge, under vals.
	snap    map[string]string
	snapRec *backend.Run
	snapAt  time.Time
	snapSV  int64
}

// seen retires the snapshot when state version sv is newer: Reads no longer use it,
// and it stays only as knowledge for transitions. e.mu is held.
func (e *runEntry) seen(sv int64) {
	if sv > e.snapSV {
		e.snapRec, e.snapSV = nil, sv
	}
}

// known is a key's value as last seen; ok is false when the key was absent.
type known struct {
	v  []byte
	ok bool
}

func (e *runEntry) get(k string) known {
	e.mu.Lock()
	defer e.mu.Unlock()
	if kn, ok := e.vals[k]; ok {
		return kn
	}
	v, ok := e.snap[k]
	if !ok {
		return known{}
	}
	return known{v: []byte(v), ok: true}
}

// learn records k's value; e.mu is held.
func (e *runEntry) learn(k string, kn known) {
	if e.vals == nil {
		e.vals = make(map[string]known, 8)
	}
	e.vals[k] = kn
}

// setRecord stores a record seen at version rv, unless a newer one is known.
func (e *runEntry) setRecord(rv int64, rec *backend.Run, data []byte, updated int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rec != nil && rv < e.rv {
		return
	}
	e.rec, e.recData, e.rv = rec, data, rv
	e.updated = max(e.updated, updated)
}

// record returns a copy of the record, its encoding and version; nil when unknown.
func (e *runEntry) record() (*backend.Run, []byte, int64, int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rec == nil {
		return nil, nil, 0, 0
	}
	r := *e.rec
	return &r, e.recData, e.rv, e.updated
}

// runCache holds the entries of the runs this process worked on recently, at most
// limit of them.
type runCache struct {
	mu    sync.Mutex
	m     map[string]*runEntry
	limit int
}

func (c *runCache) init(limit int) {
	c.m = make(map[string]*runEntry, limit)
	c.limit = limit
}

// entry returns run id's entry, creating it.
func (c *runCache) entry(id string) *runEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[id]
	if e == nil {
		if len(c.m) >= c.limit {
			// Evict up to an eighth, at random (map order): entries are only a hint,
			// except a fresh snapshot, whose version must keep older ones out.
			n := c.limit / 8
			for k, old := range c.m {
				if n <= 0 {
					break
				}
				old.mu.Lock()
				fresh := old.snapRec != nil && time.Since(old.snapAt) <= snapshotTTL
				old.mu.Unlock()
				if !fresh {
					delete(c.m, k)
					n--
				}
			}
		}
		e = &runEntry{}
		c.m[id] = e
	}
	return e
}

// peek returns run id's entry, or nil.
func (c *runCache) peek(id string) *runEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *runCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// tx is a transition of one run (backend.Tx) on what the process knows of it. It
// records each key it reads with the value it saw, which the commit script checks,
// and buffers its writes and jobs. Savepoints let several callers' transitions share
// one commit, each undone alone when it fails.
type tx struct {
	e        *runEntry
	fresh    bool // a run being created: every key is absent
	maxValue int
	rec      backend.Run

	reads     map[string]*read
	readKeys  []string
	writes    map[string]write
	writeKeys []string // in order of first write
	jobs      []backend.Job
	undo      []undo
	err       error // a value over the size limit, reported when the transition ends
}

// read is what a transition saw of a key: its value, and whether it used the value or
// only the key's existence (PutIfAbsent), which is all the commit then checks.
type read struct {
	v         []byte
	ok        bool
	valueUsed bool
}

type write struct {
	v   []byte
	del bool
}

type undo struct {
	key   string
	prev  write
	had   bool
	first bool
}

func newTx(e *runEntry, rec *backend.Run, maxValue int, fresh bool) *tx {
	return &tx{
		e: e, fresh: fresh, maxValue: maxValue, rec: *rec,
		reads: map[string]*read{}, writes: map[string]write{},
	}
}

// value returns key k's value as the transition sees it.
func (t *tx) value(k string, useValue bool) ([]byte, bool) {
	if w, ok := t.writes[k]; ok {
		return w.v, !w.del
	}
	r := t.reads[k]
	if r == nil {
		var kn known
		if !t.fresh {
			kn = t.e.get(k)
		}
		r = &read{v: kn.v, ok: kn.ok}
		t.reads[k] = r
		t.readKeys = append(t.readKeys, k)
	}
	r.valueUsed = r.valueUsed || useValue
	return r.v, r.ok
}

func (t *tx) set(k string, w write) {
	prev, had := t.writes[k]
	t.undo = append(t.undo, undo{key: k, prev: prev, had: had, first: !had})
	if !had {
		t.writeKeys = append(t.writeKeys, k)
	}
	t.writes[k] = w
}

func (t *tx) checkSize(what string, n int) error {
	if n > t.maxValue {
		err := fmt.Errorf("redis: %s is %d bytes, over the %d-byte limit: %w", what, n, t.maxValue, backend.ErrTooLarge)
		if t.err == nil {
			t.err = err
		}
		return err
	}
	return nil
}

// Run is the run's record; changes to it are saved with the transition.
func (t *tx) Run() *backend.Run { return &t.rec }

// Get returns the values of keys; absent keys are nil.
func (t *tx) Get(keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		if v, ok := t.value(k, true); ok {
			out[i] = nonNil(v)
		}
	}
	return out, nil
}

// PutIfAbsent stores key=val unless key exists.
func (t *tx) PutIfAbsent(key string, val []byte) (bool, error) {
	if _, ok := t.value(key, false); ok {
		return false, nil
	}
	if err := t.checkSize("the value of "+strconv.Quote(key), len(val)); err != nil {
		return false, err
	}
	t.set(key, write{v: nonNil(val)})
	return true, nil
}

// Put stores key=val.
func (t *tx) Put(key string, val []byte) error {
	if err := t.checkSize("the value of "+strconv.Quote(key), len(val)); err != nil {
		return err
	}
	t.set(key, write{v: nonNil(val)})
	return nil
}

// Delete removes keys.
func (t *tx) Delete(keys ...string) error {
	for _, k := range keys {
		t.set(k, write{del: true})
	}
	return nil
}

// Incr adds delta to the integer at key.
func (t *tx) Incr(key string, delta int64) (int64, error) {
	var n int64
	if v, ok := t.value(key, true); ok {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("redis: key %q holds %q, not an integer", key, v)
		}
	}
	if delta != 0 {
		n += delta
		t.set(key, write{v: strconv.AppendInt(nil, n, 10)})
	}
	return n, nil
}

// Enqueue adds jobs when the transition commits.
func (t *tx) Enqueue(jobs ...backend.Job) { t.jobs = append(t.jobs, jobs...) }

// savepoint marks the state before one caller's transition.
type savepoint struct {
	undo, jobs int
	rec        backend.Run
}

func (t *tx) save() savepoint {
	t.err = nil
	return savepoint{undo: len(t.undo), jobs: len(t.jobs), rec: t.rec}
}

// rollback undoes everything since sp. What was read stays read: the commit checks
// it, which is stricter than needed and never wrong.
func (t *tx) rollback(sp savepoint) {
	for i := len(t.undo) - 1; i >= sp.undo; i-- {
		u := t.undo[i]
		if u.had {
			t.writes[u.key] = u.prev
		} else {
			delete(t.writes, u.key)
		}
		if u.first {
			t.writeKeys = t.writeKeys[:len(t.writeKeys)-1]
		}
	}
	t.undo = t.undo[:sp.undo]
	t.jobs = t.jobs[:sp.jobs]
	t.rec = sp.rec
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
