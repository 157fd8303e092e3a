package postgres

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Option configures New. Options given to New override the same settings in the URL.
type Option func(*options)

type options struct {
	schema   string
	poll     time.Duration
	workerID string
	notify   bool
	migrate  bool
	logger   *slog.Logger
}

// DefaultSchema is the PostgreSQL schema that holds flowgen's tables unless the URL's
// schema= option or WithSchema names another.
const DefaultSchema = "flowgen"

// DefaultPollInterval is how often a waiting Dequeue or WaitRun looks at the tables
// when no notification woke it earlier.
const DefaultPollInterval = time.Second

func defaultOptions() options {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return options{
		schema:   DefaultSchema,
		poll:     DefaultPollInterval,
		workerID: fmt.Sprintf("%s-%d", host, os.Getpid()),
		notify:   true,
		migrate:  true,
		logger:   slog.Default(),
	}
}

// WithSchema puts flowgen's tables in the named PostgreSQL schema (default "flowgen";
// URL: schema=). The schema is created when missing. Backends on different schemas of
// one database share nothing, which is how tests isolate themselves.
func WithSchema(name string) Option { return func(o *options) { o.schema = name } }

// WithPollInterval sets how often a waiting Dequeue or WaitRun re-reads the tables when
// no notification arrives (default 1s; URL: poll=, a Go duration such as 250ms). With
// notifications on, new jobs and finished runs wake waiters at once and this only
// bounds how late an expired lease, or a delayed job enqueued before this process
// started listening, is noticed.
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.poll = d
		}
	}
}

// WithWorkerID sets the id recorded in the worker_id column of the jobs this backend
// leases (default host-pid; URL: worker_id=).
func WithWorkerID(id string) Option {
	return func(o *options) {
		if id != "" {
			o.workerID = id
		}
	}
}

// WithNotify turns LISTEN/NOTIFY on or off (default on; URL: notify=false). Off, waiters
// only poll: use it behind a connection pooler in transaction mode, which cannot LISTEN.
func WithNotify(on bool) Option { return func(o *options) { o.notify = on } }

// WithMigrate sets whether New applies missing migrations (default on; URL:
// migrate=false). Off, New fails unless the schema is exactly at this binary's version.
func WithMigrate(on bool) Option { return func(o *options) { o.migrate = on } }

// WithLogger sets the logger for background problems such as a lost notification
// connection (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// urlOptions are the query parameters New reads itself; the others go to pgx (for
// example sslmode, application_name, pool_max_conns).
var urlOptions = []string{"schema", "poll", "worker_id", "notify", "migrate"}

// parseURL splits connString into flowgen's own options and the rest, which is pgx's. It
// also reports whether the URL sets pool_max_conns.
func parseURL(connString string, o *options) (rest string, maxConnsSet bool, err error) {
	u, err := url.Parse(connString)
	if err != nil {
		return "", false, fmt.Errorf("postgres: parse URL: %w", redactURLError(err))
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "", false, fmt.Errorf("postgres: URL scheme %q: want postgres:// or postgresql://", u.Scheme)
	}
	q := u.Query()
	for _, k := range urlOptions {
		if !q.Has(k) {
			continue
		}
		v := q.Get(k)
		switch k {
		case "schema":
			o.schema = v
		case "poll":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return "", false, fmt.Errorf("postgres: URL option poll=%q: want a positive Go duration such as 500ms or 2s", v)
			}
			o.poll = d
		case "worker_id":
			if v == "" {
				return "", false, fmt.Errorf("postgres: URL option worker_id is empty")
			}
			o.workerID = v
		case "notify", "migrate":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return "", false, fmt.Errorf("postgres: URL option %s=%q: want true or false", k, v)
			}
			if k == "notify" {
				o.notify = b
			} else {
				o.migrate = b
			}
		}
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	return u.String(), q.Has("pool_max_conns"), nil
}

// redactURLError drops the URL (which may hold a password) from a url.Parse error.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func (o *options) validate() error {
	if o.schema == "" {
		return fmt.Errorf("postgres: schema name is empty")
	}
	if len(o.schema) > 63 {
		return fmt.Errorf("postgres: schema name %q is longer than PostgreSQL's 63 bytes", o.schema)
	}
	return nil
}
