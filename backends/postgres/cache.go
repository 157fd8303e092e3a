package postgres

import (
	"context"
	"sync"

	"github.com/flowgen/flowgen/runtime/backend"
)

// stateCache keeps the key-value state of the runs this process changed last, with the
// revision it belongs to. A transition that finds its run still at that revision (no
// other process changed it since) skips loading the state: the runs whose nodes this
// process works on, such as the 64 branches of a fan-out, are changed many times in a
// row, and their state grows with each node.
//
// A cached map is only read by the holder of its run's row lock whose revision matches,
// and only changed after that holder committed, before the new revision is cached; no
// one else can hold that revision then. Transitions of one run take turns in the
// process (runLocks), so each finds the state its predecessor cached.
type stateCache struct {
	mu    sync.Mutex
	m     map[string]*cachedState
	bytes int // sum of the entries' sizes
}

type cachedState struct {
	rev  int64
	kv   map[string][]byte
	size int // bytes of keys and values
}

// Bounds of the cache: beyond them, arbitrary runs are forgotten. A run whose state is
// larger than a quarter of the budget is not cached.
const (
	maxCachedRuns  = 1024
	maxCachedBytes = 64 << 20
)

// get returns the cached revision, state and size of run id, or -1, nil, 0. Revisions
// are random non-negative numbers, so a run deleted and created again under the same id
// cannot be mistaken for the cached one.
func (c *stateCache) get(id string) (rev int64, kv map[string][]byte, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.m[id]; s != nil {
		return s.rev, s.kv, s.size
	}
	return -1, nil, 0
}

// put records that run id is at revision rev with state kv plus changes; kv is changed
// in place. size is kv's size when it was cached before, and -1 when it is unknown.
func (c *stateCache) put(id string, rev int64, kv map[string][]byte, size int, changes []backend.Change) {
	if size < 0 {
		size = 0
		for k, v := range kv {
			size += len(k) + len(v)
		}
	}
	for _, ch := range changes {
		if v, ok := kv[ch.Key]; ok {
			size -= len(ch.Key) + len(v)
		}
		if ch.Value == nil {
			delete(kv, ch.Key)
		} else {
			kv[ch.Key] = ch.Value
			size += len(ch.Key) + len(ch.Value)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remove(id)
	if size > maxCachedBytes/4 {
		return
	}
	for k := range c.m {
		if len(c.m) < maxCachedRuns && c.bytes+size <= maxCachedBytes {
			break
		}
		c.remove(k)
	}
	c.m[id] = &cachedState{rev: rev, kv: kv, size: size}
	c.bytes += size
}

// drop forgets run id.
func (c *stateCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remove(id)
}

// remove forgets run id; c.mu is held.
func (c *stateCache) remove(id string) {
	if s := c.m[id]; s != nil {
		c.bytes -= s.size
		delete(c.m, id)
	}
}

// runLocks serializes the transitions of one run within this process. The database's
// row lock serializes them anyway; taking turns here first means that waiting
// transitions hold no connection, and that each finds the state its predecessor cached.
type runLocks struct {
	mu sync.Mutex
	m  map[string]*runLock
}

type runLock struct {
	ch chan struct{} // holds a token while locked
	n  int           // goroutines holding or waiting; guarded by runLocks.mu
}

// lock takes run id's lock, or returns ctx's error. The returned func releases it.
func (l *runLocks) lock(ctx context.Context, id string) (func(), error) {
	l.mu.Lock()
	rl := l.m[id]
	if rl == nil {
		rl = &runLock{ch: make(chan struct{}, 1)}
		l.m[id] = rl
	}
	rl.n++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if rl.n--; rl.n == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
	select {
	case rl.ch <- struct{}{}:
		return func() { <-rl.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
