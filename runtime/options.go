package runtime

import (
	"log/slog"
	"time"
)

// WorkerOption configures a Worker.
type WorkerOption func(*workerOptions)

type workerOptions struct {
	concurrency   int
	lease         time.Duration
	poll          time.Duration
	requeueDelay  time.Duration
	maxDeliveries int
	logger        *slog.Logger
}

func defaultWorkerOptions() workerOptions {
	return workerOptions{
		concurrency:   8,
		lease:         30 * time.Second,
		poll:          time.Second,
		requeueDelay:  time.Second,
		maxDeliveries: 10,
		logger:        slog.Default(),
	}
}

// WithConcurrency sets how many nodes run at once (default 8).
func WithConcurrency(n int) WorkerOption {
	return func(o *workerOptions) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// WithLease sets how long a job stays leased without a heartbeat (default 30s). The
// worker renews leases every third of it while nodes run.
func WithLease(d time.Duration) WorkerOption {
	return func(o *workerOptions) {
		if d > 0 {
			o.lease = d
		}
	}
}

// WithPollInterval sets how long one dequeue call waits for jobs (default 1s).
func WithPollInterval(d time.Duration) WorkerOption {
	return func(o *workerOptions) {
		if d > 0 {
			o.poll = d
		}
	}
}

// WithMaxDeliveries sets how often a job that cannot be handled (unknown workflow or
// node, undecodable) is delivered before it is dead-lettered (default 10).
func WithMaxDeliveries(n int) WorkerOption {
	return func(o *workerOptions) {
		if n > 0 {
			o.maxDeliveries = n
		}
	}
}

// WithLogger sets the worker's logger (default slog.Default()).
func WithLogger(l *slog.Logger) WorkerOption {
	return func(o *workerOptions) {
		if l != nil {
			o.logger = l
		}
	}
}
