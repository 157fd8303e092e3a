package runtime

import (
	"context"
	"errors"
	"fmt"
)

// permanentError marks an error that must not be retried.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that the node's remaining attempts are skipped: the fallback,
// if any, runs at once, otherwise the run fails.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Failure describes the failure a fallback node stands in for.
type Failure struct {
	Node     string // the failed node
	Attempts int    // attempts made
	Err      string // the last error
}

func (f *Failure) Error() string {
	return fmt.Sprintf("node %q failed after %d attempt(s): %s", f.Node, f.Attempts, f.Err)
}

type failureKey struct{}

// FailureFrom returns the failure a fallback node was started for, or nil outside a fallback.
func FailureFrom(ctx context.Context) *Failure {
	f, _ := ctx.Value(failureKey{}).(*Failure)
	return f
}

func withFailure(ctx context.Context, f *Failure) context.Context {
	return context.WithValue(ctx, failureKey{}, f)
}

// ErrRunFailed is matched (errors.Is) by the *RunError of a failed run.
var ErrRunFailed = errors.New("run failed")

// ErrRunCancelled is matched (errors.Is) by the *RunError of a cancelled run.
var ErrRunCancelled = errors.New("run cancelled")

// ErrNotFound is returned for a run id that does not exist.
var ErrNotFound = errors.New("run not found")

// RunError is what Await returns for a run that did not complete.
type RunError struct {
	Run       RunID
	Cancelled bool
	Node      string // the node that failed; "" for a cancelled run
	Reason    string
}

func (e *RunError) Error() string {
	if e.Cancelled {
		if e.Reason != "" {
			return fmt.Sprintf("run %s cancelled: %s", e.Run, e.Reason)
		}
		return fmt.Sprintf("run %s cancelled", e.Run)
	}
	return fmt.Sprintf("run %s failed at node %q: %s", e.Run, e.Node, e.Reason)
}

// Is makes errors.Is(err, ErrRunFailed) and errors.Is(err, ErrRunCancelled) work.
func (e *RunError) Is(target error) bool {
	if e.Cancelled {
		return target == ErrRunCancelled
	}
	return target == ErrRunFailed
}
