package azure

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/data/azcosmos"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/flowgen/flowgen/backends/redis"
	"github.com/flowgen/flowgen/runtime/backend"
)

// Default resource names and settings, used when the URL names none. `flowgen infra
// azure` creates resources with these names.
const (
	DefaultQueue    = "flowgen-jobs"
	DefaultDatabase = "flowgen"
	DefaultContexts = "contexts"
	DefaultStatuses = "statuses"
	DefaultPrefix   = "flowgen:azure:"
	// PoisonSuffix names the poison queue after the job queue, as Azure Functions does.
	PoisonSuffix = "-poison"
	// DefaultInline is the size from which a state value is stored in Cosmos DB.
	DefaultInline = 64
	// DefaultTouch is how often, at most, a run's progress refreshes its status item.
	DefaultTouch = time.Second
	// DefaultMaxDeliveries dead-letters a job delivered this many times, as a backstop
	// behind the runtime's own limits.
	DefaultMaxDeliveries = 50
	// MaxValueSize is the largest value, run input or run result the backend stores:
	// a value is one Cosmos DB item, base64-encoded, and an item holds at most 2 MB.
	MaxValueSize = 1 << 20
)

// Environment variables read when the URL gives no connection string or endpoint.
const (
	EnvStorage = "AZURE_STORAGE_CONNECTION_STRING"
	EnvCosmos  = "COSMOS_DB_CONNECTION_STRING"
	EnvRedis   = "REDIS_URL"
	// EnvQueueEndpoint and EnvCosmosEndpoint name the services for a token credential
	// (Microsoft Entra ID), used when there is no connection string.
	EnvQueueEndpoint  = "AZURE_STORAGE_QUEUE_ENDPOINT"
	EnvCosmosEndpoint = "COSMOS_DB_ENDPOINT"
)

func init() {
	backend.Register("azure", func(ctx context.Context, u *url.URL) (backend.Backend, error) {
		return Open(ctx, u.String())
	})
}

// Options are the backend's settings, normally read from its URL.
type Options struct {
	Queue, Poison      string
	Database           string
	Contexts, Statuses string
	// Storage, Cosmos and Redis are the connection strings (Redis: a redis:// URL).
	Storage, Cosmos, Redis string
	// QueueEndpoint (the queue service URL, https://ACCOUNT.queue.core.windows.net/)
	// and CosmosEndpoint (https://ACCOUNT.documents.azure.com:443/) are used, with a
	// token credential, when Storage or Cosmos respectively is empty: a connection
	// string wins.
	QueueEndpoint, CosmosEndpoint string
	// Credential authenticates to the endpoints (never used with a connection string).
	// When nil and an endpoint is used, New uses azidentity's DefaultAzureCredential:
	// the environment (AZURE_CLIENT_ID, …), workload identity, managed identity, the
	// Azure CLI. Only a caller of New can set it; ParseURL leaves it nil.
	Credential    azcore.TokenCredential
	Prefix        string
	Inline        int
	Touch         time.Duration
	MaxDeliveries int
	Create        bool
	// CosmosInsecureTLS accepts any certificate from Cosmos DB: for the local emulator
	// and its self-signed certificate only.
	CosmosInsecureTLS bool
}

// ParseURL reads the options of an azure:// URL, filling in the defaults and the
// connection strings from the environment.
func ParseURL(raw string) (Options, error) {
	o := Options{Queue: DefaultQueue, Database: DefaultDatabase, Contexts: DefaultContexts, Statuses: DefaultStatuses,
		Prefix: DefaultPrefix, Inline: DefaultInline, Touch: DefaultTouch, MaxDeliveries: DefaultMaxDeliveries}
	u, err := url.Parse(raw)
	if err != nil {
		return o, fmt.Errorf("azure: parse URL: %w", err)
	}
	if u.Scheme != "azure" {
		return o, fmt.Errorf("azure: URL scheme %q: want azure://", u.Scheme)
	}
	if u.Host != "" || (u.Path != "" && u.Path != "/") {
		return o, errors.New("azure: put every setting in the query, as azure://?queue=…&database=…")
	}
	q := u.Query()
	known := map[string]bool{}
	for k, dst := range map[string]*string{"queue": &o.Queue, "poison": &o.Poison, "database": &o.Database,
		"contexts": &o.Contexts, "statuses": &o.Statuses, "storage": &o.Storage, "cosmos": &o.Cosmos,
		"redis": &o.Redis, "prefix": &o.Prefix, "queue_endpoint": &o.QueueEndpoint,
		"cosmos_endpoint": &o.CosmosEndpoint} {
		known[k] = true
		if q.Has(k) {
			if q.Get(k) == "" {
				return o, fmt.Errorf("azure: URL option %s is empty", k)
			}
			*dst = q.Get(k)
		}
	}
	for k, dst := range map[string]*bool{"create": &o.Create, "cosmos_insecure_tls": &o.CosmosInsecureTLS} {
		known[k] = true
		if q.Has(k) {
			if *dst, err = strconv.ParseBool(q.Get(k)); err != nil {
				return o, fmt.Errorf("azure: URL option %s=%q: want 1 or 0", k, q.Get(k))
			}
		}
	}
	for k, dst := range map[string]*int{"inline": &o.Inline, "max_deliveries": &o.MaxDeliveries} {
		known[k] = true
		if q.Has(k) {
			n, err := strconv.Atoi(q.Get(k))
			if err != nil || n < 0 {
				return o, fmt.Errorf("azure: URL option %s=%q: want a whole number, 0 or more", k, q.Get(k))
			}
			*dst = n
		}
	}
	known["touch"] = true
	if s := q.Get("touch"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return o, fmt.Errorf("azure: URL option touch=%q: want a duration such as 1s", s)
		}
		o.Touch = d
	}
	for k := range q {
		if !known[k] {
			return o, fmt.Errorf("azure: unknown URL option %q", k)
		}
	}
	if o.Poison == "" {
		o.Poison = o.Queue + PoisonSuffix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return o, fmt.Errorf("azure: prefix %q must not contain braces", o.Prefix)
	}
	o.Inline = min(o.Inline, MaxValueSize)
	for _, v := range []struct {
		dst *string
		env string
	}{{&o.Storage, EnvStorage}, {&o.Cosmos, EnvCosmos}, {&o.Redis, EnvRedis},
		{&o.QueueEndpoint, EnvQueueEndpoint}, {&o.CosmosEndpoint, EnvCosmosEndpoint}} {
		if *v.dst == "" {
			*v.dst = os.Getenv(v.env)
		}
	}
	for _, v := range []struct{ name, val string }{{"queue_endpoint", o.QueueEndpoint}, {"cosmos_endpoint", o.CosmosEndpoint}} {
		if v.val != "" {
			if err := checkEndpoint(v.name, v.val); err != nil {
				return o, err
			}
		}
	}
	return o, nil
}

// Backend is the Azure backend. Its methods are safe for concurrent use.
type Backend struct {
	opts     Options
	queue    *azqueue.QueueClient
	poison   *azqueue.QueueClient
	cosmos   *azcosmos.Client
	contexts *azcosmos.ContainerClient
	statuses *azcosmos.ContainerClient
	rdb      *redis.Backend

	queueCalls, cosmosCalls atomic.Int64
	cosmosRU                atomic.Uint64 // request units × 1000
	closed                  atomic.Bool

	wake     wakeup
	idle     idleState
	vals     valueCache
	pageSize int32 // items per page of a query
	statesMu sync.Mutex
	states   map[string]*statusState // by run id
	close    sync.Once
}

// Open opens the backend an azure:// URL describes.
func Open(ctx context.Context, rawURL string) (*Backend, error) {
	o, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}

// New opens the backend with the given options: it connects to Redis and, with
// o.Create, creates the queues, database and containers that are missing.
func New(ctx context.Context, o Options) (*Backend, error) {
	switch {
	case o.Storage == "" && o.QueueEndpoint == "":
		return nil, fmt.Errorf("azure: no Storage connection string or queue endpoint: set storage= or queue_endpoint= in the URL, or %s or %s",
			EnvStorage, EnvQueueEndpoint)
	case o.Cosmos == "" && o.CosmosEndpoint == "":
		return nil, fmt.Errorf("azure: no Cosmos DB connection string or endpoint: set cosmos= or cosmos_endpoint= in the URL, or %s or %s",
			EnvCosmos, EnvCosmosEndpoint)
	case o.Redis == "":
		return nil, fmt.Errorf("azure: no Redis URL: set redis= in the URL or %s", EnvRedis)
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	b := &Backend{opts: o, states: map[string]*statusState{}, pageSize: 500}
	b.wake.init()
	b.vals.init(64 << 20)
	qopts := &azqueue.ClientOptions{}
	qopts.PerRetryPolicies = []policy.Policy{&meter{calls: &b.queueCalls}}
	// Queue calls answer at once (there is no long poll): one that hangs is retried.
	qopts.Retry.TryTimeout = 20 * time.Second
	if queueTransport != nil {
		qopts.Transport = queueTransport
	}
	var err error
	cred := o.Credential
	if cred == nil && (o.Storage == "" || o.Cosmos == "") {
		if cred, err = azidentity.NewDefaultAzureCredential(nil); err != nil {
			return nil, fmt.Errorf("azure: default Azure credential (for the endpoints without a connection string): %w", err)
		}
	}
	if o.Storage != "" {
		if b.queue, err = azqueue.NewQueueClientFromConnectionString(o.Storage, o.Queue, qopts); err != nil {
			return nil, fmt.Errorf("azure: storage connection string: %w", err)
		}
		if b.poison, err = azqueue.NewQueueClientFromConnectionString(o.Storage, o.Poison, qopts); err != nil {
			return nil, fmt.Errorf("azure: storage connection string: %w", err)
		}
	} else {
		if err := checkEndpoint("queue_endpoint", o.QueueEndpoint); err != nil {
			return nil, err
		}
		base := strings.TrimSuffix(o.QueueEndpoint, "/") + "/"
		if b.queue, err = azqueue.NewQueueClient(base+url.PathEscape(o.Queue), cred, qopts); err != nil {
			return nil, fmt.Errorf("azure: queue endpoint %s: %w", o.QueueEndpoint, err)
		}
		if b.poison, err = azqueue.NewQueueClient(base+url.PathEscape(o.Poison), cred, qopts); err != nil {
			return nil, fmt.Errorf("azure: queue endpoint %s: %w", o.QueueEndpoint, err)
		}
	}
	copts := &azcosmos.ClientOptions{}
	copts.PerRetryPolicies = []policy.Policy{&meter{calls: &b.cosmosCalls, ru: &b.cosmosRU}}
	if o.CosmosInsecureTLS {
		// Only for the local emulator's self-signed certificate; never a default.
		copts.Transport = &http.Client{Timeout: 65 * time.Second, Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // explicit test option
			MaxIdleConnsPerHost: 64,
		}}
	}
	if o.Cosmos != "" {
		if b.cosmos, err = azcosmos.NewClientFromConnectionString(o.Cosmos, copts); err != nil {
			return nil, fmt.Errorf("azure: Cosmos DB connection string: %w", err)
		}
	} else {
		if err := checkEndpoint("cosmos_endpoint", o.CosmosEndpoint); err != nil {
			return nil, err
		}
		if b.cosmos, err = azcosmos.NewClient(o.CosmosEndpoint, cred, copts); err != nil {
			return nil, fmt.Errorf("azure: Cosmos DB endpoint %s: %w", o.CosmosEndpoint, err)
		}
	}
	if b.contexts, err = b.cosmos.NewContainer(o.Database, o.Contexts); err != nil {
		return nil, fmt.Errorf("azure: Cosmos DB container %s: %w", o.Contexts, err)
	}
	if b.statuses, err = b.cosmos.NewContainer(o.Database, o.Statuses); err != nil {
		return nil, fmt.Errorf("azure: Cosmos DB container %s: %w", o.Statuses, err)
	}
	ru, err := redisURL(o.Redis, o.Prefix)
	if err != nil {
		return nil, err
	}
	if b.rdb, err = redis.Open(ctx, ru); err != nil {
		return nil, fmt.Errorf("azure: coordination: %w", err)
	}
	if o.Create {
		if err := b.create(ctx); err != nil {
			_ = b.rdb.Close()
			return nil, err
		}
	}
	return b, nil
}

// queueTransport, when set (by the tests, for an emulator's self-signed certificate),
// carries the queue clients' requests.
var queueTransport policy.Transporter

// redisURL is the URL of the Redis backend that holds the coordination: the user's
// Redis URL with this backend's prefix, runs kept until ExpireRuns deletes them (their
// status items live in Cosmos DB as long), and values up to MaxValueSize. On a Redis
// Cluster (cluster=true in the URL) the prefix becomes a hash tag, "{flowgen:azure}:",
// since the Redis backend keeps all its keys in one slot there.
func redisURL(raw, prefix string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		return "", fmt.Errorf("azure: redis= %q: want a redis:// or rediss:// URL", redactURL(raw))
	}
	q := u.Query()
	if cluster, _ := strconv.ParseBool(q.Get("cluster")); cluster {
		prefix = "{" + strings.TrimSuffix(prefix, ":") + "}:"
	}
	q.Set("prefix", prefix)
	q.Set("ttl", "0")
	q.Set("maxvalue", strconv.Itoa(MaxValueSize))
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// checkEndpoint checks that an endpoint is an http(s) URL with a host and no query
// (the place of a SAS token: use a connection string for that).
func checkEndpoint(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
		return fmt.Errorf("azure: %s %q: want an https:// URL such as %s", name, redactURL(raw), endpointExample[name])
	}
	return nil
}

var endpointExample = map[string]string{
	"queue_endpoint":  "https://ACCOUNT.queue.core.windows.net/",
	"cosmos_endpoint": "https://ACCOUNT.documents.azure.com:443/",
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// meter is a pipeline policy that counts the HTTP requests of a client and, for Cosmos
// DB, the request units they were charged.
type meter struct {
	calls *atomic.Int64
	ru    *atomic.Uint64
}

func (m *meter) Do(req *policy.Request) (*http.Response, error) {
	m.calls.Add(1)
	resp, err := req.Next()
	if m.ru != nil && resp != nil {
		if v, perr := strconv.ParseFloat(resp.Header.Get("x-ms-request-charge"), 64); perr == nil {
			m.ru.Add(uint64(v * 1000))
		}
	}
	return resp, err
}

// Counters reports the calls made so far by this process: "azure_queue_calls",
// "cosmos_calls", "cosmos_ru" (request units charged, as the server reports them), and
// the Redis backend's "redis_cmds", "redis_round_trips" and "redis_calls".
func (b *Backend) Counters(ctx context.Context) (map[string]float64, error) {
	m, err := b.rdb.Counters(ctx)
	if err != nil {
		return nil, err
	}
	m["azure_queue_calls"] = float64(b.queueCalls.Load())
	m["cosmos_calls"] = float64(b.cosmosCalls.Load())
	m["cosmos_ru"] = float64(b.cosmosRU.Load()) / 1000
	return m, nil
}

// ScannedName names the reconciler's scanned count: status items of Cosmos DB.
func (b *Backend) ScannedName() string { return "scannedItems" }

// Close closes the Redis connections and makes later calls fail with
// backend.ErrClosed.
func (b *Backend) Close() error {
	var err error
	b.close.Do(func() {
		b.closed.Store(true)
		b.wake.kick()
		err = b.rdb.Close()
	})
	return err
}

func (b *Backend) check() error {
	if b.closed.Load() {
		return backend.ErrClosed
	}
	return nil
}

// statusCode is the HTTP status of an Azure SDK error, or 0.
func statusCode(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// wakeup wakes the Dequeue calls of this process that wait for jobs when this process
// enqueues some, so that a chain of nodes handled by one process does not wait for the
// next poll.
type wakeup struct {
	mu sync.Mutex
	ch chan struct{}
}

func (w *wakeup) init() { w.ch = make(chan struct{}) }

func (w *wakeup) wait() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *wakeup) kick() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}
