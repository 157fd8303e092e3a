package azure

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"

	"github.com/flowgen/flowgen/runtime/backend"
)

// refMagic starts every reference to a value in the contexts container, as Redis holds
// it. A value that happens to start with it is itself stored by reference, so that
// whatever starts with it is a reference.
var refMagic = []byte("\x00\xa7cosmos:")

// valueDoc is an item of the contexts container: one state value, immutable. Its id
// is content-addressed (see docID), so a transition that runs again writes the same
// item, and a conflict (409) means it is there already.
type valueDoc struct {
	ID    string `json:"id"`
	RunID string `json:"runId"`
	Key   string `json:"key"`
	V     []byte `json:"v"` // base64 in JSON: any bytes round-trip
}

// docID names the item of value v of key k of run id created at created (unix µs):
// the creation time keeps a new run that reuses an expired run's id from meeting its
// predecessor's items.
func docID(run string, created int64, k string, v []byte) string {
	h := sha256.New()
	var n [8]byte
	for _, s := range []string{run, k} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(n[:], uint64(created))
	h.Write(n[:])
	h.Write(v)
	return hex.EncodeToString(h.Sum(nil))
}

func (b *Backend) byRef(v []byte) bool {
	return len(v) >= b.opts.Inline || bytes.HasPrefix(v, refMagic)
}

func refOf(id string) []byte { return append(append([]byte{}, refMagic...), id...) }

// refID returns the item id a stored value refers to, if it is a reference.
func refID(v []byte) (string, bool) {
	if !bytes.HasPrefix(v, refMagic) {
		return "", false
	}
	return string(v[len(refMagic):]), true
}

func tooLarge(run, what string, n int) error {
	return fmt.Errorf("azure: run %s: %s is %d bytes, over the %d-byte limit: %w", run, what, n, MaxValueSize, backend.ErrTooLarge)
}

// writeValues writes the items of pending (id → value) to the contexts container,
// those this process has not written or read already, in parallel.
func (b *Backend) writeValues(ctx context.Context, run string, pending map[string]pendingValue) error {
	var ids []string
	for id := range pending {
		if _, ok := b.vals.get(run, id); !ok {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	pk := azcosmos.NewPartitionKeyString(run)
	return b.each(len(ids), func(i int) error {
		id := ids[i]
		p := pending[id]
		data, err := json.Marshal(valueDoc{ID: id, RunID: run, Key: p.key, V: p.v})
		if err != nil {
			return err
		}
		if _, err := b.contexts.CreateItem(ctx, pk, data, nil); err != nil && statusCode(err) != 409 {
			if statusCode(err) == 413 {
				return tooLarge(run, "the value of "+p.key, len(p.v))
			}
			return fmt.Errorf("azure: run %s: write the value of %q to Cosmos DB: %w", run, p.key, err)
		}
		b.vals.put(run, id, p.v)
		return nil
	})
}

type pendingValue struct {
	key string
	v   []byte
}

// resolve replaces the references among vals by their values, reading the items not
// cached (point reads, in parallel). local holds values a transition wrote already.
func (b *Backend) resolve(ctx context.Context, run string, vals [][]byte, local map[string]pendingValue) error {
	var miss []int
	for i, v := range vals {
		id, ok := refID(v)
		if !ok {
			continue
		}
		if p, ok := local[id]; ok {
			vals[i] = p.v
		} else if c, ok := b.vals.get(run, id); ok {
			vals[i] = c
		} else {
			miss = append(miss, i)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	pk := azcosmos.NewPartitionKeyString(run)
	return b.each(len(miss), func(j int) error {
		i := miss[j]
		id, _ := refID(vals[i])
		resp, err := b.contexts.ReadItem(ctx, pk, id, nil)
		// The item was written before the commit that refers to it, but under session
		// consistency another client's read may reach a replica that has not got it
		// yet: a 404 is retried for a while.
		for try := 1; statusCode(err) == 404 && try <= 12; try++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * 25 * time.Millisecond):
			}
			resp, err = b.contexts.ReadItem(ctx, pk, id, nil)
		}
		if err != nil {
			return fmt.Errorf("azure: run %s: read value %s from Cosmos DB: %w", run, id, err)
		}
		var d valueDoc
		if err := json.Unmarshal(resp.Value, &d); err != nil {
			return fmt.Errorf("azure: run %s: value %s: %w", run, id, err)
		}
		if d.V == nil {
			d.V = []byte{}
		}
		b.vals.put(run, id, d.V)
		vals[i] = d.V
		return nil
	})
}

// valueCache holds values of the contexts container by run and id. Items never
// change, so an entry is never stale; an entry also says that the item exists.
type valueCache struct {
	mu    sync.Mutex
	m     map[string][]byte
	size  int
	limit int
}

func (c *valueCache) init(limit int) {
	c.m = map[string][]byte{}
	c.limit = limit
}

func (c *valueCache) get(run, id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[run+"/"+id]
	return v, ok
}

func (c *valueCache) put(run, id string, v []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := run + "/" + id
	if _, ok := c.m[k]; ok {
		return
	}
	if c.size+len(v) > c.limit {
		// Forget about half, at random (map order).
		for k, old := range c.m {
			if c.size <= c.limit/2 {
				break
			}
			delete(c.m, k)
			c.size -= len(old)
		}
	}
	c.m[k] = v
	c.size += len(v)
}

// dropRun forgets the values of run.
func (c *valueCache) dropRun(run string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := run + "/"
	for k, v := range c.m {
		if strings.HasPrefix(k, p) {
			delete(c.m, k)
			c.size -= len(v)
		}
	}
}
