// Package runtime is the small runtime that flowgen-generated workflow packages link
// against: the Client that starts, awaits, cancels and resumes runs, the Worker that
// executes nodes, and the completion algorithm that makes node effects exactly-once on
// at-least-once queues. Queue, state and coordination live in a backend (package
// runtime/backend), selected by URL in Open.
package runtime

// RunID identifies a run.
type RunID string
