package runtime

import (
	"context"
	"errors"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// ReconcileStats counts what one reconciliation pass did.
type ReconcileStats struct {
	Scanned    int // running runs without progress for the threshold, looked at
	Stalled    int // of those, runs of this worker's workflows with lost work (or that could not be read)
	Reconciled int // stalled runs whose lost node instances were enqueued again
	Failed     int // stalled runs that could not be reconciled (Stalled = Reconciled + Failed)
}

// errNothingLost ends a reconciliation transition that found nothing to do.
var errNothingLost = errors.New("nothing lost")

// Reconcile finds runs of the worker's workflows that are running but made no progress
// for stalledAfter, and enqueues again exactly the node instances that are claimed and
// not complete, following the recorded routing; it never re-decides a branch. It
// covers every node instance: top-level nodes, loop iterations and batch items. It
// leaves alone instances that wait by design — a sleep before its wake-up time, a wait
// node not yet resumed — so that a long sleep does not collect a job per pass. Duplicate
// jobs are harmless (completions are recorded once), so it is safe to run on every
// worker at once.
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
		// The run may have progressed since it was listed (another reconciler, a
		// late worker): only a run still stalled in the transition counts.
		err := w.c.b.Update(ctx, r.ID, func(tx backend.Tx) error {
			run := tx.Run()
			if run.Status != backend.Running || run.Updated.After(cutoff) {
				return errNothingLost
			}
			n, err := newTransition(tx, wf).requeueOpen(true)
			if err == nil && n == 0 {
				return errNothingLost // a sleeping or waiting run: nothing to write
			}
			return err
		})
		switch {
		case errors.Is(err, errNothingLost):
		case err != nil:
			st.Stalled++
			st.Failed++
			w.log.Warn("flowgen: reconcile failed", "run", r.ID, "err", err)
		default:
			st.Stalled++
			st.Reconciled++
		}
	}
	return st, nil
}
