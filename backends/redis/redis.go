// Package redis is the Redis backend of flowgen, registered as "redis://" and
// "rediss://" (TLS): the queue, the run state and the coordination of a distributed
// run all live in one Redis (5.0 or later; tested on 7.0), through
// github.com/redis/go-redis/v9. Runs survive worker restarts and Redis restarts (with
// Redis persistence on); a Redis outage pauses the workers, which reconnect.
//
// # URL
//
//	redis://[user:password@]host:port/db?prefix=flowgen:&ttl=24h&poll=1s
//	rediss://…  (TLS; skip_verify=true or ca=/path/ca.pem for private certificates)
//
// Options in the query (the others are go-redis's: pool_size, dial_timeout, …):
//
//   - prefix: prepended to every key and channel (default "flowgen:"); backends with
//     different prefixes on one Redis never see each other. Braces are allowed only as
//     one hash tag, as in "{flowgen}:", which Redis Cluster needs (see below).
//   - cluster: true for Redis Cluster, with more seed nodes in addr= parameters.
//   - ttl: how long a finished run (completed, failed, cancelled) is kept before Redis
//     expires it, as a Go duration or a number of seconds (default 24h; 0 keeps runs
//     for ever). A rerun makes the run permanent again until it finishes.
//   - poll: the longest a waiting Dequeue or WaitRun goes without asking Redis again
//     when no notification arrives (default 1s). Notifications (pub/sub) normally wake
//     them at once; the poll covers notifications lost while reconnecting.
//   - maxdeliveries: a job whose lease expired on this many deliveries is moved to the
//     dead-letter hash instead of being delivered again (default 20; 0: no limit). The
//     runtime's own limits (attempts, WithMaxDeliveries) normally act first.
//   - maxvalue: the largest value, run input or result stored, in bytes (default
//     512 MiB, Redis's largest string); larger ones fail with backend.ErrTooLarge.
//   - ca: a PEM file of certificate authorities to trust for rediss://.
//
// # Keys
//
// With prefix P:
//
//	P run:{ID}        hash: one run. "rec" its record (binary), "rv" the record's
//	                  version, "sv" the version of its state (bumped by every change),
//	                  "u" its last change (unix µs), and ".<key>" each key of the
//	                  run's state (completion records with outputs and routing, arrival
//	                  marks, claims, counters). Expires ttl after the run ends.
//	P {q}:ready       sorted set: jobs ready to run, score -priority. A job is one
//	                  member, "<sequence, 16 hex digits><deliveries>|<job body>", so
//	                  equal priorities pop in FIFO order (see Backend.Enqueue)
//	P {q}:delayed     sorted set: jobs not yet due, by due time (unix ms)
//	P {q}:leased      sorted set: delivered jobs, by lease deadline (unix ms); the
//	                  member holds the delivery's number, the lease's token
//	P {q}:waiting     sorted set: the Dequeue calls waiting for jobs, by when they stop;
//	                  only while it holds one do pushes publish a wake-up
//	P {q}:dead        hash: dead job's sequence → JSON {t, n, r: reason} "\n" job body
//	P {idx}:running   sorted set: running runs by creation time (unix ms)
//	P {idx}:progress  sorted set: running runs by last progress, to the second: what
//	                  the reconciler reads, without KEYS or SCAN
//	P {idx}:completed, P {idx}:failed, P {idx}:cancelled
//	                  sorted sets: finished runs by finish time, trimmed by ttl
//	P stats           hash: round trips and calls of each client process (metering)
//	P wake, P done    pub/sub channels: "a job is ready", "run <id> ended", and
//	P stats           "write your counts now" (Counters)
//
// The keys of one run share the hash tag {ID}, the queue's {q} and the indexes' {idx}
// (unless the prefix holds a hash tag, which then comes first and wins).
//
// # Transitions
//
// The runtime's completion algorithm (runtime/engine.go) runs in Go, on a Tx; it is
// not ported to Lua. Update is optimistic concurrency on what this process already
// knows of the run: the snapshot its Dequeue brought with the job, the values of its
// own earlier commits and Reads (a key never seen counts as absent). The transition
// runs on that and records every key it read with the value it saw; then one Lua
// script, scripts/commit.lua, checks atomically that each of those keys still has that
// value and that the record's version is unchanged, and only then applies the writes,
// bumps the versions, moves the run between the status indexes, sets its expiry when
// it ends, publishes its end and pushes its jobs into the queue. So "record the output
// and routing, record the join arrivals, enqueue the ready successors" happens once,
// atomically, or not at all. On a conflict the script returns the current values of
// what was read, and the transition runs again on them (at most 100 times, with jitter
// after the third). A transition that fails is checked the same way, since its error
// may come from stale knowledge. Within a process, the Updates of one run are
// serialised, and those that arrive together are committed as one batch by one script
// call, each undone alone if it fails (a 64-way join costs a few commits, not 64).
//
// The queue has one script per operation (scripts/*.lua; lib.lua is prepended to
// each). Dequeue (dequeue.lua) applies the acks waiting to be sent, moves due delayed
// jobs and expired leases to the ready set (at most every 10ms when busy), leases up
// to max jobs, and returns with each job the whole hash of its run when it has at most
// 128 fields, or else the run's state version. The worker's Read of the job's inputs
// is answered from that snapshot (it is fresher than the commit that enqueued the
// job), for 250ms and until this process sees a later version of the run. A Dequeue
// that finds nothing registers the process in the waiting set and waits for a pub/sub
// wake-up, which pushes publish only while a registration lasts; until one arrives,
// later Dequeue calls of the process wait without asking Redis. When a commit makes
// jobs ready while a Dequeue call of its process wants jobs, the commit script leases
// them at once and that call gets them from the reply (handoff.go): a chain of nodes
// then costs one round trip per node, and no other process is woken for them.
//
// # Round trips
//
// Commands that goroutines issue at the same moment go out together as one pipeline
// (pipe.go). A node execution costs one commit (two when another process changed
// what its transition read) and its share of a Dequeue, which leases as many jobs as
// the worker has idle executors and carries their inputs; none when its commit handed
// the next job over. Its Ack costs no round trip of its own: Ack returns at once, and
// the ack goes with the next commit or Dequeue of the process, or after 2ms in a batch
// of its own, so a job can be delivered again if its process dies in that window (its
// completion is recorded already: the duplicate only acks). Counters
// (backend.Metered) reports the commands Redis ran (INFO commandstats, those inside
// scripts included), and the round trips and calls of every process on the prefix.
//
// Clocks: leases and delays are computed from the clock of the process that takes or
// pushes the job, so keep the workers' clocks in sync (NTP), as with any lease-based
// queue.
//
// # Redis Cluster
//
// Give the URL the seed nodes and cluster=true:
//
//	redis://host1:6379?addr=host2:6379&addr=host3:6379&cluster=true&prefix={flowgen}:
//
// The commit and dequeue scripts are atomic across a run's keys, the queue's and the
// indexes', and Redis Cluster runs a script only on keys of one slot. So, as BullMQ
// does, the backend keeps all its keys in one slot: on a cluster its prefix must hold
// a hash tag (default DefaultClusterPrefix, "{flowgen}:"), which then decides the slot
// of every key (the run's own {ID} tag is not the first one, so it no longer counts).
// The cluster brings failover and room for other data; one prefix's throughput is one
// master's, and deployments with different prefixes spread over the masters. For
// failover without a cluster, give New a Sentinel client (goredis.NewFailoverClient).
// The reconciler re-enqueues what a failover loses.
package redis

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/runtime/backend"
)

func init() {
	backend.Register("redis", open)
	backend.Register("rediss", open)
}

func open(ctx context.Context, u *url.URL) (backend.Backend, error) {
	return Open(ctx, u.String())
}

// Defaults of the URL options.
const (
	DefaultPrefix        = "flowgen:"
	DefaultClusterPrefix = "{flowgen}:"
	DefaultTTL           = 24 * time.Hour
	DefaultPoll          = time.Second
	DefaultMaxDeliveries = 20
	DefaultMaxValue      = 512 << 20
)

//go:embed scripts/lib.lua
var libLua string

//go:embed scripts/commit.lua
var commitLua string

//go:embed scripts/enqueue.lua
var enqueueLua string

//go:embed scripts/dequeue.lua
var dequeueLua string

//go:embed scripts/ack.lua
var ackLua string

//go:embed scripts/extend.lua
var extendLua string

//go:embed scripts/requeue.lua
var requeueLua string

//go:embed scripts/deadletter.lua
var deadletterLua string

//go:embed scripts/expire.lua
var expireLua string

//go:embed scripts/release.lua
var releaseLua string

// The scripts, each with the library prepended.
var (
	commitScript     = newScript("commit", libLua+commitLua)
	enqueueScript    = newScript("enqueue", libLua+enqueueLua)
	dequeueScript    = newScript("dequeue", libLua+dequeueLua)
	ackScript        = newScript("ack", libLua+ackLua)
	extendScript     = newScript("extend", libLua+extendLua)
	requeueScript    = newScript("requeue", libLua+requeueLua)
	deadletterScript = newScript("deadletter", libLua+deadletterLua)
	expireScript     = newScript("expire", libLua+expireLua)
	releaseScript    = newScript("release", libLua+releaseLua)
)

// Options configure a Backend; Open reads them from the URL.
type Options struct {
	// Prefix is prepended to every key and channel (default DefaultPrefix).
	Prefix string
	// TTL is how long finished runs are kept (default DefaultTTL; negative keeps them).
	TTL time.Duration
	// Poll bounds a waiting Dequeue or WaitRun between checks (default DefaultPoll).
	Poll time.Duration
	// MaxDeliveries dead-letters a job whose lease expired this many times (default
	// DefaultMaxDeliveries; negative: no limit).
	MaxDeliveries int
	// MaxValue is the largest value stored, in bytes (default DefaultMaxValue).
	MaxValue int
}

// Backend is the Redis backend. It is safe for concurrent use.
type Backend struct {
	rdb  goredis.UniversalClient
	pipe *pipe
	opts Options
	k    keys

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	bg        sync.WaitGroup

	cache   runCache
	runsMu  sync.Mutex
	runs    map[string]*runQueue // runs with Updates in progress in this process
	notify  notifier
	acks    acks
	handoff handoff

	proc       string        // this process's field in the stats hash
	meter      atomic.Int64  // commands the metering sent (stats hash, INFO excluded)
	statsAsked chan struct{} // Counters of some process asks for the counts
	seq        atomic.Uint64 // the last job member's sequence number
	promoted   atomic.Int64  // when this process's Dequeue last promoted (unix ms)
	idle       idleState
}

var errClosed = fmt.Errorf("redis: %w", backend.ErrClosed)

// Open connects to the Redis named by rawURL (see the package documentation) and checks
// that it answers.
func Open(ctx context.Context, rawURL string) (*Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis backend URL: %w", err)
	}
	opts, ca, cluster, err := parseOptions(u)
	if err != nil {
		return nil, fmt.Errorf("redis backend URL %s: %w", redact(u), err)
	}
	rdb, err := newClient(u, cluster, ca)
	if err != nil {
		return nil, fmt.Errorf("redis backend URL %s: %w", redact(u), err)
	}
	b, err := New(ctx, rdb, opts)
	if err != nil {
		return nil, fmt.Errorf("redis backend %s: %w", redact(u), err)
	}
	return b, nil
}

// newClient makes the go-redis client for u: a cluster client when cluster is set
// (seed nodes in u's host and addr= parameters), else a single-server one; ca is a PEM
// file of authorities to trust for TLS.
func newClient(u *url.URL, cluster bool, ca string) (goredis.UniversalClient, error) {
	var tlsConfig **tls.Config
	var rdb func() goredis.UniversalClient
	if cluster {
		copts, err := goredis.ParseClusterURL(u.String())
		if err != nil {
			return nil, err
		}
		if !u.Query().Has("protocol") {
			copts.Protocol = 2
		}
		tlsConfig = &copts.TLSConfig
		rdb = func() goredis.UniversalClient { return goredis.NewClusterClient(copts) }
	} else {
		ropts, err := goredis.ParseURL(u.String())
		if err != nil {
			return nil, err
		}
		if !u.Query().Has("protocol") {
			// RESP2: this backend needs no push notifications, and RESP3's make go-redis
			// look for them before every pipeline, at the cost of a system call.
			ropts.Protocol = 2
		}
		tlsConfig = &ropts.TLSConfig
		rdb = func() goredis.UniversalClient { return goredis.NewClient(ropts) }
	}
	if ca != "" {
		if *tlsConfig == nil {
			return nil, errors.New("ca= needs rediss://")
		}
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca=%s holds no PEM certificate", ca)
		}
		(*tlsConfig).RootCAs = pool
	}
	return rdb(), nil
}

// New returns a backend on an existing client, which it closes on Close. On a
// *goredis.ClusterClient the prefix must hold a hash tag (default DefaultClusterPrefix).
func New(ctx context.Context, rdb goredis.UniversalClient, opts Options) (*Backend, error) {
	_, cluster := rdb.(*goredis.ClusterClient)
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
		if cluster {
			opts.Prefix = DefaultClusterPrefix
		}
	}
	if err := checkPrefix(opts.Prefix, cluster); err != nil {
		_ = rdb.Close()
		return nil, err
	}
	switch {
	case opts.TTL == 0:
		opts.TTL = DefaultTTL
	case opts.TTL < 0:
		opts.TTL = 0
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	switch {
	case opts.MaxDeliveries == 0:
		opts.MaxDeliveries = DefaultMaxDeliveries
	case opts.MaxDeliveries < 0:
		opts.MaxDeliveries = 0
	}
	if opts.MaxValue <= 0 {
		opts.MaxValue = DefaultMaxValue
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	b := &Backend{
		rdb:  rdb,
		pipe: newPipe(rdb),
		opts: opts,
		k:    newKeys(opts.Prefix),
		stop: make(chan struct{}),
		runs: map[string]*runQueue{},
		proc: hex.EncodeToString(id[:]),
	}
	b.cache.init(4096)
	b.notify.init()
	b.handoff.signal = make(chan struct{})
	b.acks.kick = make(chan struct{}, 1)
	b.statsAsked = make(chan struct{}, 1)
	b.bg.Add(3)
	go b.subscribe()
	go b.flushStats()
	go b.sendAcks()
	return b, nil
}

// checkPrefix accepts a prefix without braces, or with one hash tag — "{name}" before
// any other brace — which puts every key of the backend in that tag's slot: what Redis
// Cluster needs (cluster), since the scripts touch a run's keys together with the
// queue's.
func checkPrefix(p string, cluster bool) error {
	i := strings.IndexAny(p, "{}")
	if i < 0 {
		if cluster {
			return fmt.Errorf("prefix %q: on Redis Cluster the prefix must hold a hash tag, such as %q, so that all of the backend's keys share one slot", p, DefaultClusterPrefix)
		}
		return nil
	}
	j := strings.IndexByte(p[i+1:], '}')
	if p[i] != '{' || j <= 0 || strings.ContainsAny(p[i+1+j+1:], "{}") {
		return fmt.Errorf("prefix %q: braces mark a hash tag; use at most one, such as %q", p, DefaultClusterPrefix)
	}
	return nil
}

// parseOptions takes this backend's options out of u's query, leaving go-redis's, and
// reports whether it names a cluster (cluster=true).
func parseOptions(u *url.URL) (Options, string, bool, error) {
	q := u.Query()
	var o Options
	take := func(name string) (string, bool) {
		v, ok := q[name]
		q.Del(name)
		if !ok || len(v) == 0 {
			return "", false
		}
		return v[len(v)-1], true
	}
	duration := func(name string) (time.Duration, bool, error) {
		s, ok := take(name)
		if !ok || s == "" {
			return 0, false, nil
		}
		if n, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(n * float64(time.Second)), true, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return 0, false, fmt.Errorf("%s=%q: want a duration such as 30s, 5m or 24h", name, s)
		}
		return d, true, nil
	}
	integer := func(name string) (int, bool, error) {
		s, ok := take(name)
		if !ok || s == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, false, fmt.Errorf("%s=%q: want a whole number, 0 or more", name, s)
		}
		return n, true, nil
	}
	if p, ok := take("prefix"); ok {
		if p == "" {
			return o, "", false, errors.New("prefix= is empty")
		}
		o.Prefix = p
	}
	ttl, set, err := duration("ttl")
	if err != nil {
		return o, "", false, err
	}
	if set {
		o.TTL = ttl
		if ttl == 0 {
			o.TTL = -1
		}
	}
	if o.Poll, _, err = duration("poll"); err != nil {
		return o, "", false, err
	}
	n, set, err := integer("maxdeliveries")
	if err != nil {
		return o, "", false, err
	}
	if set {
		o.MaxDeliveries = n
		if n == 0 {
			o.MaxDeliveries = -1
		}
	}
	if o.MaxValue, _, err = integer("maxvalue"); err != nil {
		return o, "", false, err
	}
	ca, _ := take("ca")
	cluster := false
	if c, ok := take("cluster"); ok {
		if cluster, err = strconv.ParseBool(c); err != nil {
			return o, "", false, fmt.Errorf("cluster=%q: want true or false", c)
		}
	}
	u.RawQuery = q.Encode()
	return o, ca, cluster, nil
}

// redact hides the password of u.
func redact(u *url.URL) string { return u.Redacted() }

// ScannedName names the reconciler's scanned count as the seed's Redis adapter does:
// each run it looks at is one key (backend.ScanNamer).
func (b *Backend) ScannedName() string { return "scannedKeys" }

// Close stops the backend: blocked Dequeue and WaitRun calls return, and the
// connections close.
func (b *Backend) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.stop)
		b.notify.close()
		b.bg.Wait()
		b.releaseHandoff()
		b.pipe.close()
		err = b.rdb.Close()
	})
	return err
}

// keys are the names of the backend's keys and channels.
type keys struct {
	prefix                                          string
	ready, delayed, leased, waiting, dead           string
	running, progress, completed, failed, cancelled string
	stats, statsChannel, wake, done                 string
}

func newKeys(p string) keys {
	return keys{
		prefix:       p,
		ready:        p + "{q}:ready",
		delayed:      p + "{q}:delayed",
		leased:       p + "{q}:leased",
		waiting:      p + "{q}:waiting",
		dead:         p + "{q}:dead",
		running:      p + "{idx}:running",
		progress:     p + "{idx}:progress",
		completed:    p + "{idx}:completed",
		failed:       p + "{idx}:failed",
		cancelled:    p + "{idx}:cancelled",
		stats:        p + "stats",
		statsChannel: p + "stats",
		wake:         p + "wake",
		done:         p + "done",
	}
}

// run is the key of run id's hash.
func (k *keys) run(id string) string { return k.prefix + "run:{" + id + "}" }

// status is the index of runs in status s.
func (k *keys) status(s backend.Status) string {
	switch s {
	case backend.Running:
		return k.running
	case backend.Completed:
		return k.completed
	case backend.Failed:
		return k.failed
	case backend.Cancelled:
		return k.cancelled
	}
	return k.prefix + "{idx}:" + string(s)
}
