package sqlite

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// BenchmarkUpdate measures one transition of the size of a node completion: two keys
// read and written, one job enqueued.
func BenchmarkUpdate(b *testing.B) {
	be, _ := open(b)
	ctx := context.Background()
	if _, err := be.CreateRun(ctx, &backend.Run{ID: "r", Status: backend.Running}, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		err := be.Update(ctx, "r", func(tx backend.Tx) error {
			if _, err := tx.PutIfAbsent(fmt.Sprint("done/", i), []byte("1")); err != nil {
				return err
			}
			if _, err := tx.Incr("open", 1); err != nil {
				return err
			}
			tx.Enqueue(backend.Job{ID: fmt.Sprint(i), Run: "r"})
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDequeueAck measures leasing and acknowledging one job, with parallel
// goroutines doing the same (group commit shares their transactions).
func BenchmarkDequeueAck(b *testing.B) {
	be, _ := open(b)
	ctx := context.Background()
	jobs := make([]backend.Job, b.N)
	for i := range jobs {
		jobs[i] = backend.Job{ID: fmt.Sprint(i), Run: "r"}
	}
	if err := be.Enqueue(ctx, jobs...); err != nil {
		b.Fatal(err)
	}
	var failed atomic.Value
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ds, err := be.Dequeue(ctx, 1, time.Minute, time.Second)
			if err == nil && len(ds) == 1 {
				err = be.Ack(ctx, ds...)
			}
			if err != nil {
				failed.Store(err)
			}
		}
	})
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
