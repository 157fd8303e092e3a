package redis

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/runtime/backend"
)

// notifier passes on what the backend's subscription hears: "a job is ready" wakes
// every waiting Dequeue, "run <id> ended" wakes the WaitRun calls on that run. When
// the subscription (re)connects, everyone is woken, since messages may have been lost.
type notifier struct {
	mu     sync.Mutex
	wake   chan struct{} // closed and replaced on a wake-up
	runs   map[string]map[chan *backend.Run]struct{}
	closed bool
}

func (n *notifier) init() {
	n.wake = make(chan struct{})
	n.runs = map[string]map[chan *backend.Run]struct{}{}
}

// wakeCh returns a channel closed at the next wake-up.
func (n *notifier) wakeCh() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.wake
}

func (n *notifier) wakeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		close(n.wake)
		n.wake = make(chan struct{})
	}
}

// watch returns a channel that receives when run id ends (the run, when the
// notification carried it, else nil); unwatch releases it.
func (n *notifier) watch(id string) chan *backend.Run {
	ch := make(chan *backend.Run, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	set := n.runs[id]
	if set == nil {
		set = map[chan *backend.Run]struct{}{}
		n.runs[id] = set
	}
	set[ch] = struct{}{}
	return ch
}

func (n *notifier) unwatch(id string, ch chan *backend.Run) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if set := n.runs[id]; set != nil {
		delete(set, ch)
		if len(set) == 0 {
			delete(n.runs, id)
		}
	}
}

// ended parses a done notification and wakes the watchers of its run.
func (n *notifier) ended(msg string) {
	head, rest, ok := strings.Cut(msg, ":")
	size, err := strconv.Atoi(head)
	if !ok || err != nil || size > len(rest) {
		return
	}
	id, rest := rest[:size], rest[size:]
	var run *backend.Run
	if u, rec, ok := strings.Cut(rest, ":"); ok {
		if r, err := decodeRecord(id, []byte(rec)); err == nil {
			if us, err := strconv.ParseInt(u, 10, 64); err == nil {
				r.Updated = time.UnixMicro(us)
				run = r
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.runs[id] {
		var cp *backend.Run
		if run != nil {
			r := *run
			cp = &r
		}
		select {
		case ch <- cp:
		default:
		}
	}
}

// everything wakes every waiter.
func (n *notifier) everything() {
	n.mu.Lock()
	for _, set := range n.runs {
		for ch := range set {
			select {
			case ch <- nil:
			default:
			}
		}
	}
	n.mu.Unlock()
	n.wakeAll()
}

func (n *notifier) close() {
	n.wakeAll()
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
}

// subscribe listens to the wake and done channels until the backend closes. go-redis
// reconnects the subscription by itself after an outage.
func (b *Backend) subscribe() {
	defer b.bg.Done()
	ps := b.rdb.Subscribe(context.Background(), b.k.wake, b.k.done, b.k.statsChannel)
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions(goredis.WithChannelSize(1024))
	for {
		select {
		case <-b.stop:
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *goredis.Subscription:
				b.notify.everything()
			case *goredis.Message:
				switch m.Channel {
				case b.k.wake:
					b.notify.wakeAll()
				case b.k.done:
					b.notify.ended(m.Payload)
				case b.k.statsChannel:
					select {
					case b.statsAsked <- struct{}{}:
					default:
					}
				}
			}
		}
	}
}

// WaitRun blocks until run id is no longer running or ctx is done (backend.Waiter).
// It is woken by the run's end on the done channel, and checks the run at least every
// poll interval in case the notification was lost.
func (b *Backend) WaitRun(ctx context.Context, id string) (*backend.Run, error) {
	ch := b.notify.watch(id)
	defer b.notify.unwatch(id, ch)
	t := time.NewTimer(b.opts.Poll)
	defer t.Stop()
	for {
		r, _, err := b.Read(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.Status.Final() {
			return r, nil
		}
		t.Reset(b.opts.Poll)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-b.stop:
			return nil, errClosed
		case r := <-ch:
			if r != nil && r.Status.Final() {
				return r, nil
			}
		case <-t.C:
		}
	}
}
