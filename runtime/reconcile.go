package runtime

import (
	"context"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// ReconcileStats counts what one reconciliation pass did.
type ReconcileStats struct {
	Scanned    int // running runs without recent progress looked at
	Stalled    int // of those, runs of workflows this worker has
	Reconciled int // stalled runs whose open nodes were enqueued again
	Failed     int // stalled runs that could not be reconciled
}

// Reconcile finds runs of the worker's workflows that are running but made no progress
// for stalledAfter, and enqueues again exactly the node instances that are claimed and
// not complete, following the recorded routing; it never re-decides a branch. Duplicate
// jobs are harmless (completions are recorded once), so it is safe to run on every
// worker at once. It covers nodes outside loops and batches.
func (w *Worker) Reconcile(ctx context.Context, stalledAfter time.Duration) (ReconcileStats, error) {
	var st ReconcileStats
	cutoff := time.Now().Add(-stalledAfter)
	runs, err := w.c.b.ListRuns(ctx, backend.RunFilter{Status: backend.Running, UpdatedBefore: cutoff, Limit: 1000})
	if err != nil {
		return st, err
	}
	for _, r := range runs {
		st.Scanned++
		wf := w.wfs[r.Workflow]
		if wf == nil || wf.Version != r.Version {
			continue
		}
		st.Stalled++
		err := w.c.b.Update(ctx, r.ID, func(tx backend.Tx) error {
			if run := tx.Run(); run.Status != backend.Running || run.Updated.After(cutoff) {
				return nil
			}
			_, err := newTransition(tx, wf).requeueOpen()
			return err
		})
		if err != nil {
			st.Failed++
			w.log.Warn("flowgen: reconcile failed", "run", r.ID, "err", err)
			continue
		}
		st.Reconciled++
	}
	return st, nil
}
