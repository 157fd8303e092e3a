package postgres

import (
	"container/heap"
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Notifications: every transaction that enqueues jobs or finishes a run calls
// pg_notify on the schema's channel, in the transaction, so the notification is sent
// exactly when the change commits. One connection per Backend LISTENs, started the first
// time something waits, and wakes the waiters of this process. Payloads:
//
//	j        jobs are ready now
//	d<µs>    a job becomes ready in <µs> microseconds
//	r<id>    run <id> reached a final status
//
// A lost notification costs latency, never correctness: waiters also poll.

// channelName is the notification channel of a schema, short enough for any schema name.
func channelName(schema string) string {
	h := fnv.New64a()
	h.Write([]byte(schema))
	return "flowgen_" + strconv.FormatUint(h.Sum64(), 16)
}

// jobPayloads are the notifications announcing jobs: "j" when some are ready now,
// "d<µs>" for the soonest delayed one.
func jobPayloads(delays []int64) []string {
	var now bool
	soonest := int64(-1)
	for _, d := range delays {
		if d <= 0 {
			now = true
		} else if soonest < 0 || d < soonest {
			soonest = d
		}
	}
	var ps []string
	if now {
		ps = append(ps, "j")
	}
	if soonest > 0 {
		ps = append(ps, "d"+strconv.FormatInt(soonest, 10))
	}
	return ps
}

// startListener starts the LISTEN loop once, unless notifications are off or the
// backend is closed.
func (b *Backend) startListener() {
	if !b.opts.notify {
		return
	}
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.listening || b.ctx.Err() != nil {
		return
	}
	b.listening = true
	b.bg.Add(1)
	go b.listen()
}

// listen keeps a connection LISTENing on the channel until Close.
func (b *Backend) listen() {
	defer b.bg.Done()
	pause := 50 * time.Millisecond
	for b.ctx.Err() == nil {
		started := time.Now()
		err := b.listenConn(b.ctx)
		if b.ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			pause = 50 * time.Millisecond
		}
		b.opts.logger.Warn("flowgen postgres: notification connection lost; waiters poll until it is back",
			"err", err, "retry_in", pause)
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

func (b *Backend) listenConn(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, b.listenCfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{b.channel}.Sanitize()); err != nil {
		return err
	}
	// Notifications sent while nobody listened are lost: have every waiter look again.
	b.jobs.fire()
	b.runs.fireAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		b.dispatch(n.Payload)
	}
}

func (b *Backend) dispatch(payload string) {
	switch {
	case payload == "j":
		b.jobs.fire()
	case strings.HasPrefix(payload, "d"):
		if us, err := strconv.ParseInt(payload[1:], 10, 64); err == nil {
			b.jobs.fireAt(time.Now().Add(time.Duration(us) * time.Microsecond))
		}
	case strings.HasPrefix(payload, "r"):
		b.runs.fire(payload[1:])
	}
}

// signal wakes the goroutines waiting for jobs: fire closes the current channel and
// makes a new one; fireAt fires at a later time (delayed jobs).
type signal struct {
	mu    sync.Mutex
	ch    chan struct{}
	due   timeHeap
	timer *time.Timer
	at    time.Time // when timer fires; zero when it is not set
}

// maxDue bounds the remembered wake-up times; beyond it, polling takes over.
const maxDue = 4096

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

// C returns the channel the next fire closes.
func (s *signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.ch)
	s.ch = make(chan struct{})
}

func (s *signal) fireAt(t time.Time) {
	if !t.After(time.Now()) {
		s.fire()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.due) >= maxDue {
		return
	}
	heap.Push(&s.due, t)
	s.arm()
}

// arm sets the timer to the earliest due time; s.mu is held.
func (s *signal) arm() {
	if len(s.due) == 0 {
		return
	}
	next := s.due[0]
	if !s.at.IsZero() && !next.Before(s.at) {
		return
	}
	s.at = next
	d := time.Until(next)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.onTimer)
	} else {
		s.timer.Reset(d)
	}
}

func (s *signal) onTimer() {
	s.mu.Lock()
	now := time.Now()
	for len(s.due) > 0 && !s.due[0].After(now) {
		heap.Pop(&s.due)
	}
	s.at = time.Time{}
	s.arm()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

func (s *signal) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.due = nil
}

type timeHeap []time.Time

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *timeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// runWaiters wakes the goroutines waiting for runs to finish.
type runWaiters struct {
	mu sync.Mutex
	m  map[string]*runWait
}

type runWait struct {
	ch chan struct{}
	n  int // goroutines waiting
}

// add registers a waiter for run id and returns the channel closed when it may be done.
func (w *runWaiters) add(id string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	rw := w.m[id]
	if rw == nil {
		rw = &runWait{ch: make(chan struct{})}
		w.m[id] = rw
	}
	rw.n++
	return rw.ch
}

// remove unregisters a waiter added with add, whose channel was ch.
func (w *runWaiters) remove(id string, ch <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rw := w.m[id]; rw != nil && rw.ch == ch {
		if rw.n--; rw.n == 0 {
			delete(w.m, id)
		}
	}
}

func (w *runWaiters) fire(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rw := w.m[id]; rw != nil {
		close(rw.ch)
		delete(w.m, id)
	}
}

func (w *runWaiters) fireAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, rw := range w.m {
		close(rw.ch)
		delete(w.m, id)
	}
}
