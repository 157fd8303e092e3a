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
//   - inline=N stores state values up to N bytes inside the run's coordination item
//     (default 1024); larger values go to the contexts table, by reference.
//   - ttl=D keeps a finished run for D (a Go duration or seconds; default 24h, 0 keeps
//     it for ever): the TTL attribute expiresAt (Unix seconds) is set on its items.
//   - touch=D refreshes a running run's status mirror after progress at most every D
//     (default 1s).
//
// # Layout
//
// The coordination table (hash key pk = run id) holds the truth: one item per run with
// the run record (status, lastUpdated, workflow, input, result, reason, …), the run's
// key-value state as one binary attribute, and a version ver. Every coordination fact
// (completion records, routing decisions, per-predecessor join arrivals, claims,
// counters) is a key of that state, so every transition is one conditional write of
// the item: UpdateItem with the condition ver = :expected and ADD ver :one (an atomic
// counter); creation is a PutItem with attribute_not_exists(pk).
//
// The statuses table (hash key runId) holds a mirror of each run for queries: status,
// lastUpdated, created, workflow, result or failedNode and reason, parent, expiresAt,
// and mver, the coordination version it mirrors. Its global secondary index
// status-lastUpdated (hash status, range lastUpdated; projection INCLUDE created, mver,
// workflow) serves the reconciler's query for
// stalled runs and ListRuns by status; it is paginated. A mirror is written after the
// coordination write that it follows, by a PutItem on the condition that the mirror it
// replaces is older (absent, of an earlier run with the same id, or at a lower mver; a
// creation replaces any mirror of another run with its id; a repair replaces exactly
// the mirror it read), so that a late write never replaces a newer one. It is written when the run is created,
// whenever its status, result or reason changes, and after progress when the last
// mirror write is touch= old (the coordination item records when), so that a run's
// lastUpdated stays fresh for the stalled-run query without a second write per node.
// A status change (a run finishing, or a finished run made running again by a rerun)
// also writes the new mirror just before the coordination write, at the previous
// version: whoever reads the new status with Read then finds the run under it in
// ListRuns, and no crash between the writes can hide a running run from the reconciler.
//
// The repair rule: Read reads only the coordination item. ListRuns finds candidates in
// the statuses table (the index, or a scan without a status), reads their coordination
// items (BatchGetItem, strongly consistent), returns the runs as those say and leaves out
// those that no longer match the filter. A mirror that differs from its coordination
// item (a lower mver: a crash between the two writes, or progress within touch=; the
// same mver with another status or lastUpdated: a status change's early mirror whose
// transition did not commit) is written again on the way. CreateRun of an existing run
// repairs that run's mirror too (a crash after the creation's first write). A run whose
// mirror does not match a filter that its truth matches is missed until its next mirror
// write; for the reconciler's query that is harmless, since a stalled run's mirror is
// at most touch= behind its truth.
//
// The contexts table (hash runId, range ref) holds state values larger than inline=,
// each under a fresh, unique ref written once before the coordination write that
// points at it; they never change, so they are cached in memory.
//
// What each operation costs, in API calls: Read, 1 GetItem (+1 BatchGetItem for
// uncached large values). A transition (Update), 1 conditional UpdateItem (naming only
// the attributes that change; DynamoDB bills the whole item's size), preceded by
// a consistent GetItem unless this process holds the item as it last read or wrote it
// (a node's Read just before its completion leaves it there; a stale copy costs one
// failed conditional write, then the read), +1 PutItem of the mirror when due
// (creation, touch=; a status change 2), +1 PutItem or BatchWriteItem for large values,
// +1 SendMessageBatch per ten jobs; a lost race repeats the GetItem and UpdateItem. A
// run's finish also stamps its contexts items with the TTL (1 Query + 1 UpdateItem per
// item, only for runs that have any). ListRuns, the pages of one Query or Scan + 1
// BatchGetItem per 100 candidates + 1 PutItem per stale mirror.
//
// # TTL and expiry
//
// When a run reaches a final status, the transition sets expiresAt = now + ttl= on its
// coordination item and its mirror, then on its contexts items (a Query of the run's
// items, best effort: ExpireRuns deletes what a crash there leaves). A rerun removes
// them again. DynamoDB deletes expired items lazily (within days); until then the
// backend treats an expired coordination item as absent (reads, and the conditions of
// transitions, which compare expiresAt with the time), and CreateRun may reuse its id.
// A subflow's child may thus expire while its parent runs if the parent outlives ttl=.
// ExpireRuns (backend.Expirer) deletes finished runs older than a cutoff at once,
// through the index, for servers without TTL (dynalite) and for exact retention.
//
// # Transitions and exactly once
//
// Update reads the coordination item (strongly consistent, or the copy this process
// last read or wrote), runs the completion algorithm over it, writes large values by reference, then writes the item back on
// the condition that its version is still the one read. ConditionalCheckFailed is a
// normal outcome: another transition won, and this one is run again from the read, with
// jittered backoff. Only then are the mirror and the transition's jobs written; a crash
// between the write and the send leaves claimed, incomplete node instances that the
// reconciler enqueues again (following the routing recorded in the state). So a node
// completes exactly once however often its job is delivered, and a join arrival, being
// a key named after its predecessor, counts once.
//
// # Serverless (AWS Lambda)
//
// A Lambda with an SQS event source on the jobs queue can run nodes instead of polling
// workers, through runtime.Worker.HandleMessage: the Backend implements
// backend.MessageDecoder (DecodeMessage), and DeadLetter of such a delivery sends the
// job to the dead-letter queue and deletes nothing (the event source deletes it). Use
// batch size 1, or report partial batch failures (ReportBatchItemFailures), and a
// visibility timeout longer than the longest node plus the function's overhead, since
// nothing extends it:
//
//	var w *runtime.Worker // in init: runtime.Open(ctx, "aws://?queue=..."), NewWorker, Register
//
//	func handler(ctx context.Context, ev events.SQSEvent) (events.SQSEventResponse, error) {
//		var resp events.SQSEventResponse
//		for _, m := range ev.Records {
//			// A job delayed beyond SQS's 15 minutes surfaces early: HandleMessage
//			// sends it again with the rest of its delay, and this message is done.
//			if err := w.HandleMessage(ctx, []byte(m.Body)); err != nil { // visible again
//				resp.BatchItemFailures = append(resp.BatchItemFailures,
//					events.SQSBatchItemFailure{ItemIdentifier: m.MessageId})
//			}
//		}
//		return resp, nil
//	}
//
//	func main() { lambda.Start(handler) } // github.com/aws/aws-lambda-go
//
// A failed message becomes visible again after the visibility timeout; the queue's
// redrive policy (max_receives) moves messages that keep failing, and bodies that are
// not jobs, to the dead-letter queue. Retries with backoff are new, delayed messages. The
// event source's receive count is not in the body, so Deliveries counts only the copies
// the backend made: a message that keeps failing is bounded by the redrive policy
// (max_receives), not by the worker's max deliveries. Enable partial batch responses on
// the event source mapping (FunctionResponseTypes: ReportBatchItemFailures).
//
// # What the local servers do not reproduce
//
// The tests run on dynalite and local-aws-sqs. They do not reproduce: eventual
// consistency of global secondary indexes (on AWS the status-lastUpdated index lags
// writes; ListRuns checks each candidate against the strongly consistent coordination
// item, so a lagging index yields at most a missed or extra candidate, never a wrong
// record); throttling (ProvisionedThroughputExceededException, ThrottlingException,
// RequestLimitExceeded: the SDK's standard retryer retries them with backoff, 8
// attempts, without a client-side retry quota; unprocessed BatchGetItem and
// BatchWriteItem items are retried with jitter); TTL deletion (dynalite has no
// UpdateTimeToLive: create=1 ignores the refusal; readers treat expired items as absent,
// and ExpireRuns is the tested path); SQS's at-least-once duplicates and early
// surfacing of long delays (handled by the exactly-once transitions and by sending
// early jobs again). ConditionalCheckFailedException is never an error to them: it is
// how a lost race is detected, and the backend handles it as such.
//
// # Limits
//
// Values, run inputs and results above MaxValueSize (100 KiB) fail with an error
// wrapping backend.ErrTooLarge; a coordination item that would exceed DynamoDB's 400 KB
// (many inline values) fails the same way. SQS delays and leases count in whole seconds: leases are rounded up,
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
	// DefaultInline is the largest state value kept inside the coordination item.
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

// IndexAttributes are the non-key attributes the status-lastUpdated index projects
// (projection INCLUDE).
var IndexAttributes = []string{"created", "mver", "workflow"}

func init() {
	backend.Register("aws", func(ctx context.Context, u *url.URL) (backend.Backend, error) {
		return Open(ctx, u.String())
	})
}

// Options are the backend's settings, normally read from its URL.
type Options struct {
	// Region overrides the SDK's region (region=).
	Region string
	// Queue and DLQ are the jobs queue and its dead-letter queue: names or queue URLs.
	Queue, DLQ string
	// Contexts, Statuses and Coordination are the DynamoDB tables' names.
	Contexts     string
	Statuses     string
	Coordination string
	// EndpointSQS and EndpointDynamoDB point the clients at other servers.
	EndpointSQS      string
	EndpointDynamoDB string
	// Create creates missing queues and tables (create=1).
	Create bool
	// MaxReceives is the redrive policy's maxReceiveCount that Create sets.
	MaxReceives int
	// Inline is the largest state value kept inside the coordination item.
	Inline int
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

	// items caches the coordination item each run had when this process last read or
	// wrote it; Update's first try starts from it instead of reading (the conditional
	// write detects a stale copy, and the transition is then run again from a read).
	itemMu sync.Mutex
	items  map[string]*coordItem
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
	b := &Backend{opts: o, refs: map[string][]byte{}, items: map[string]*coordItem{}}
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

// Counters reports the API calls made so far, per service: "sqs_calls" and
// "dynamodb_calls" (backend.Metered; SDK retries are not counted).
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
