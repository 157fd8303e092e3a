// Package aws is the AWS backend, registered as "aws://": jobs in an SQS standard queue
// (with a dead-letter queue), run records and run state in DynamoDB.
//
// # URL
//
//	aws://?region=us-east-1&queue=flowgen-jobs&dlq=flowgen-jobs-dlq&contexts=flowgen-contexts&statuses=flowgen-statuses&coordination=flowgen-coordination
//
// Every parameter is optional; the defaults are the names `flowgen infra aws` creates
// (DefaultQueue, DefaultDLQ, DefaultContextsTable, DefaultStatusesTable,
// DefaultCoordinationTable). queue and dlq are queue names or full queue URLs.
// Credentials and the region come from the SDK's default chain (AWS_REGION,
// AWS_ACCESS_KEY_ID, profiles, roles); region= overrides the chain's region. Endpoints:
// endpoint= points both services at one server; endpoint_sqs= and endpoint_dynamodb=
// set one each (the local test servers listen on two ports); without them the SDK's
// standard variables AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS and AWS_ENDPOINT_URL_DYNAMODB
// apply. Other parameters:
//
//   - create=1 creates missing queues and tables (development and tests; off by default).
//   - max_receives=N is the redrive policy's maxReceiveCount set by create=1 (default 50):
//     the queue's own backstop for messages no worker manages to handle; the runtime
//     dead-letters a job itself after its -max-deliveries.
//   - inline=N stores state values up to N bytes inside the run's status item (default
//     1024); larger values go to the contexts table, by reference.
//
// # Layout
//
// The statuses table (hash key runId) holds one item per run: the run record (status,
// lastUpdated, workflow, input, result, reason, …), the run's key-value state as one
// binary attribute, and a version number. A global secondary index status-lastUpdated
// (hash status, range lastUpdated) serves the reconciler's query for stalled runs.
//
// The contexts table (hash runId, range ref) holds state values larger than inline=,
// each under a fresh, unique ref written once before the status item that points at
// it; they never change, so they are cached in memory.
//
// The coordination table (hash key pk, TTL attribute expiresAt) is created by create=1
// and `flowgen infra aws` for compatibility with other flowgen deployments; this design
// does not need it, because every coordination fact (completion records, routing
// decisions, join arrivals, claims, counters) is a key of the run's state, changed
// only by version-conditional writes of the status item.
//
// # Transitions
//
// Update reads the status item (strongly consistent), runs the completion algorithm over
// it, writes large values by reference, then writes the status item back with a
// condition on its version (ConditionalCheckFailed is a normal outcome: the transition
// is retried from the read, with jittered backoff). Only then are the transition's jobs
// sent to SQS; a crash between the write and the send leaves claimed, incomplete node
// instances that the reconciler enqueues again. A node therefore completes exactly once,
// and a join arrival, being a key named after its predecessor, counts once.
//
// # Limits
//
// Values, run inputs and results above MaxValueSize (100 KiB) fail with an error
// wrapping backend.ErrTooLarge; a status item that would exceed DynamoDB's 400 KB fails
// the same way. SQS delays and leases count in whole seconds: leases are rounded up,
// delays are rounded up (a job is never delivered before its NotBefore), and a job
// delayed longer than SQS's 15 minutes is sent again with the remaining delay when it
// surfaces early. SQS neither orders nor prioritises: Job.Priority is carried but not
// honoured.
package aws

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go/middleware"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Default resource names, used when the URL names none. `flowgen infra aws` creates
// resources with these names.
const (
	DefaultQueue             = "flowgen-jobs"
	DefaultDLQ               = "flowgen-jobs-dlq"
	DefaultContextsTable     = "flowgen-contexts"
	DefaultStatusesTable     = "flowgen-statuses"
	DefaultCoordinationTable = "flowgen-coordination"
	// StatusIndex is the statuses table's global secondary index on (status, lastUpdated).
	StatusIndex = "status-lastUpdated"
	// DefaultMaxReceives is the redrive policy's maxReceiveCount that create=1 sets.
	DefaultMaxReceives = 50
	// DefaultInline is the largest state value kept inside the status item.
	DefaultInline = 1024
	// MaxValueSize is the largest value, run input or run result the backend stores.
	MaxValueSize = 100 << 10
	// DefaultTTL is how long a finished run is kept before DynamoDB's TTL deletes it.
	DefaultTTL = 24 * time.Hour
	// DefaultTouch is how often, at most, progress refreshes a run's status mirror.
	DefaultTouch = time.Second
	// TTLAttribute is the TTL attribute of the coordination, statuses and contexts tables.
	TTLAttribute = "expiresAt"
)

func init() {
	backend.Register("aws", func(ctx context.Context, u *url.URL) (backend.Backend, error) {
		return Open(ctx, u.String())
	})
}

// Options are the backend's settings, normally read from its URL.
type Options struct {
	Region           string
	Queue, DLQ       string // names or queue URLs
	Contexts         string
	Statuses         string
	Coordination     string
	EndpointSQS      string
	EndpointDynamoDB string
	Create           bool
	MaxReceives      int
	Inline           int
	// TTL is how long a finished run is kept (0: for ever); Touch is how often, at
	// most, progress refreshes the lastUpdated of a run's status mirror.
	TTL, Touch time.Duration
}

// ParseURL reads the options of an aws:// URL, filling in the defaults.
func ParseURL(raw string) (Options, error) {
	o := Options{Queue: DefaultQueue, Contexts: DefaultContextsTable, Statuses: DefaultStatusesTable,
		Coordination: DefaultCoordinationTable, MaxReceives: DefaultMaxReceives, Inline: DefaultInline,
		TTL: DefaultTTL, Touch: DefaultTouch}
	u, err := url.Parse(raw)
	if err != nil {
		return o, fmt.Errorf("aws: parse URL: %w", err)
	}
	if u.Scheme != "aws" {
		return o, fmt.Errorf("aws: URL scheme %q: want aws://", u.Scheme)
	}
	if u.Host != "" || (u.Path != "" && u.Path != "/") {
		return o, fmt.Errorf("aws: URL %q: put every setting in the query, as aws://?region=…&queue=…", raw)
	}
	q := u.Query()
	str := func(k string, dst *string) error {
		if q.Has(k) {
			if q.Get(k) == "" {
				return fmt.Errorf("aws: URL option %s is empty", k)
			}
			*dst = q.Get(k)
		}
		return nil
	}
	for k, dst := range map[string]*string{"region": &o.Region, "queue": &o.Queue, "dlq": &o.DLQ,
		"contexts": &o.Contexts, "statuses": &o.Statuses, "coordination": &o.Coordination,
		"endpoint_sqs": &o.EndpointSQS, "endpoint_dynamodb": &o.EndpointDynamoDB} {
		if err := str(k, dst); err != nil {
			return o, err
		}
	}
	if e := q.Get("endpoint"); e != "" {
		if o.EndpointSQS == "" {
			o.EndpointSQS = e
		}
		if o.EndpointDynamoDB == "" {
			o.EndpointDynamoDB = e
		}
	}
	if o.DLQ == "" {
		o.DLQ = o.Queue + "-dlq"
		if strings.Contains(o.Queue, "://") {
			o.DLQ = ""
		}
	}
	if q.Has("create") {
		if o.Create, err = strconv.ParseBool(q.Get("create")); err != nil {
			return o, fmt.Errorf("aws: URL option create=%q: want 1 or 0", q.Get("create"))
		}
	}
	for k, dst := range map[string]*int{"max_receives": &o.MaxReceives, "inline": &o.Inline} {
		if q.Has(k) {
			n, err := strconv.Atoi(q.Get(k))
			if err != nil || n < 0 {
				return o, fmt.Errorf("aws: URL option %s=%q: want a non-negative integer", k, q.Get(k))
			}
			*dst = n
		}
	}
	for k, dst := range map[string]*time.Duration{"ttl": &o.TTL, "touch": &o.Touch} {
		if q.Has(k) {
			d, err := parseDuration(q.Get(k))
			if err != nil || d < 0 {
				return o, fmt.Errorf("aws: URL option %s=%q: want a duration such as 24h or 1s (or seconds), 0 or more", k, q.Get(k))
			}
			*dst = d
		}
	}
	if o.Inline > MaxValueSize {
		o.Inline = MaxValueSize
	}
	known := map[string]bool{"region": true, "queue": true, "dlq": true, "contexts": true, "statuses": true,
		"coordination": true, "endpoint": true, "endpoint_sqs": true, "endpoint_dynamodb": true, "create": true,
		"max_receives": true, "inline": true, "ttl": true, "touch": true}
	for k := range q {
		if !known[k] {
			return o, fmt.Errorf("aws: unknown URL option %q", k)
		}
	}
	return o, nil
}

// parseDuration reads a Go duration, or a number of seconds.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

// Backend is the AWS backend. Its methods are safe for concurrent use.
type Backend struct {
	opts     Options
	sqs      *sqs.Client
	ddb      *dynamodb.Client
	queueURL string
	dlqURL   string

	sqsCalls, ddbCalls atomic.Int64
	closed             atomic.Bool

	refMu    sync.Mutex
	refs     map[string][]byte // immutable referenced values, by runId + "/" + ref
	refBytes int
}

// Open opens the backend an aws:// URL describes.
func Open(ctx context.Context, rawURL string) (*Backend, error) {
	o, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}

// New opens the backend with the given options.
func New(ctx context.Context, o Options) (*Backend, error) {
	var lopts []func(*config.LoadOptions) error
	if o.Region != "" {
		lopts = append(lopts, config.WithRegion(o.Region))
	}
	lopts = append(lopts, config.WithRetryer(func() awssdk.Retryer {
		// No client-side retry quota: a burst of throttles must not turn into errors
		// that the retry budget no longer covers.
		return retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 8
			so.RateLimiter = ratelimit.None
		})
	}))
	cfg, err := config.LoadDefaultConfig(ctx, lopts...)
	if err != nil {
		return nil, fmt.Errorf("aws: load the SDK configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("aws: no region: set region= in the URL or AWS_REGION")
	}
	b := &Backend{opts: o, refs: map[string][]byte{}}
	b.sqs = sqs.NewFromConfig(cfg, func(so *sqs.Options) {
		if o.EndpointSQS != "" {
			so.BaseEndpoint = awssdk.String(o.EndpointSQS)
		}
		so.APIOptions = append(so.APIOptions, counter(&b.sqsCalls))
	})
	b.ddb = dynamodb.NewFromConfig(cfg, func(do *dynamodb.Options) {
		if o.EndpointDynamoDB != "" {
			do.BaseEndpoint = awssdk.String(o.EndpointDynamoDB)
		}
		do.APIOptions = append(do.APIOptions, counter(&b.ddbCalls))
	})
	if o.Create {
		if err := b.create(ctx); err != nil {
			return nil, err
		}
	}
	if b.queueURL == "" {
		if b.queueURL, err = b.resolveQueue(ctx, o.Queue); err != nil {
			return nil, err
		}
	}
	if b.dlqURL == "" && o.DLQ != "" {
		if b.dlqURL, err = b.resolveQueue(ctx, o.DLQ); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// counter counts the API calls a client makes (one per operation, retries not counted).
func counter(n *atomic.Int64) func(*middleware.Stack) error {
	return func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("flowgenCallCounter",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				n.Add(1)
				return next.HandleInitialize(ctx, in)
			}), middleware.After)
	}
}

// Counters reports the API calls made so far: "sqs_calls" and "dynamodb_calls".
func (b *Backend) Counters(context.Context) (map[string]float64, error) {
	return map[string]float64{
		"sqs_calls":      float64(b.sqsCalls.Load()),
		"dynamodb_calls": float64(b.ddbCalls.Load()),
	}, nil
}

// Close marks the backend closed; the SDK clients hold no resources that need closing.
func (b *Backend) Close() error {
	b.closed.Store(true)
	return nil
}

func (b *Backend) check() error {
	if b.closed.Load() {
		return backend.ErrClosed
	}
	return nil
}

// jitter sleeps a random time up to d, or until ctx is done.
func jitter(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(time.Duration(rand.Int64N(int64(d) + 1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// isCode reports whether err is an API error with one of the given codes.
func isCode(err error, codes ...string) bool {
	var ae interface{ ErrorCode() string }
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}
