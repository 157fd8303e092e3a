package redis

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// pipe sends the commands that goroutines issue at the same time to Redis together, as
// pipelines (flat combining) on a few lanes: a caller queues its command on a lane; if
// no pipeline of that lane is in flight, it sends every command queued there, its own
// included, in one round trip, hands the others their replies, and passes the lead to
// the first caller that queued meanwhile. Under load the batches grow by themselves;
// alone, a command goes out at once from its caller's goroutine. With two lanes, Redis
// runs one batch while this process reads the replies of another and sends the next.
// Nothing blocking (no BLPOP, no SUBSCRIBE) goes through it.
type pipe struct {
	rdb      goredis.UniversalClient
	lanes    [lanes]lane
	next     atomic.Uint32  // the lane a caller tries first when all are busy
	inflight sync.WaitGroup // commands queued and not yet answered
	trips    atomic.Int64   // pipelines sent: client round trips
	calls    atomic.Int64   // commands and scripts sent
}

// lanes is how many pipelines of one process may be in flight at once.
const lanes = 2

// lane is a queue of commands with at most one pipeline in flight.
type lane struct {
	mu      sync.Mutex
	queue   []*op
	sending bool // a caller is sending this lane's pipeline
	closed  bool
}

// op is one command in flight. script, when set, is the script an EVALSHA runs, sent
// again with EVAL when Redis lost its script cache (a restart, SCRIPT FLUSH). done
// receives opDone when the reply is in, or opLead when the caller is to send.
type op struct {
	cmd    *goredis.Cmd
	script *script
	done   chan int
}

const (
	opDone = iota + 1
	opLead
)

// script is a Lua script and its SHA-1, which EVALSHA names it by.
type script struct {
	name string
	src  string
	sha  string
}

func newScript(name, src string) *script {
	h := sha1.Sum([]byte(src))
	return &script{name: name, src: src, sha: hex.EncodeToString(h[:])}
}

var opPool = sync.Pool{New: func() any { return &op{done: make(chan int, 1)} }}

func newPipe(rdb goredis.UniversalClient) *pipe {
	return &pipe{rdb: rdb}
}

// close waits for the commands queued; later commands fail.
func (p *pipe) close() {
	for i := range p.lanes {
		l := &p.lanes[i]
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}
	p.inflight.Wait()
}

// lane picks the lane for a command: the first idle one, else the next in turn.
func (p *pipe) lane() *lane {
	for i := range p.lanes {
		l := &p.lanes[i]
		l.mu.Lock()
		idle := !l.sending
		l.mu.Unlock()
		if idle {
			return l
		}
	}
	return &p.lanes[p.next.Add(1)%lanes]
}

// do sends args as one command and returns its reply.
func (p *pipe) do(ctx context.Context, args ...any) (any, error) {
	return p.run(ctx, nil, args)
}

// eval runs script on keys with args, by its SHA.
func (p *pipe) eval(ctx context.Context, s *script, keys []string, args []any) (any, error) {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, "evalsha", s.sha, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	v, err := p.run(ctx, s, a)
	if err != nil {
		err = fmt.Errorf("redis: %s script: %w", s.name, err)
	}
	return v, err
}

func (p *pipe) run(ctx context.Context, s *script, args []any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := opPool.Get().(*op)
	o.cmd, o.script = goredis.NewCmd(context.Background(), args...), s
	l := p.lane()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errClosed
	}
	p.inflight.Add(1)
	l.queue = append(l.queue, o)
	lead := !l.sending
	l.sending = true
	l.mu.Unlock()
	// Once queued, the command goes out even if ctx ends, and the caller waits for its
	// reply, so that what it did (a dequeued job, a committed transition) is never lost
	// to it. Network timeouts bound the wait.
	if lead || <-o.done == opLead {
		p.send(l, o)
	}
	v, err := o.cmd.Result()
	o.cmd, o.script = nil, nil
	opPool.Put(o)
	if errors.Is(err, goredis.Nil) {
		err = nil
	}
	return v, err
}

// send sends every command queued on l, own among them, as one pipeline, answers them,
// and passes the lead on to the first caller that queued meanwhile, if any.
func (p *pipe) send(l *lane, own *op) {
	ctx := context.Background()
	l.mu.Lock()
	batch := l.queue
	l.queue = nil
	l.mu.Unlock()

	pl := p.rdb.Pipeline()
	for _, o := range batch {
		_ = pl.Process(ctx, o.cmd)
	}
	_, _ = pl.Exec(ctx) // each command carries its own error
	p.trips.Add(1)
	p.calls.Add(int64(len(batch)))
	for _, o := range batch {
		if o.script != nil && goredis.HasErrorPrefix(o.cmd.Err(), "NOSCRIPT") {
			p.trips.Add(1)
			p.calls.Add(1)
			args := o.cmd.Args()
			res, err := p.rdb.Do(ctx, append([]any{"eval", o.script.src}, args[2:]...)...).Result()
			o.cmd.SetVal(res)
			o.cmd.SetErr(err)
		}
	}

	l.mu.Lock()
	var next *op
	if len(l.queue) > 0 {
		next = l.queue[0]
	} else {
		l.sending = false
	}
	l.mu.Unlock()
	for _, o := range batch {
		if o != own {
			o.done <- opDone
		}
	}
	p.inflight.Add(-len(batch))
	if next != nil {
		next.done <- opLead
	}
}
