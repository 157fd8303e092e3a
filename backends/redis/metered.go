package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Counters reports, for `flowgen bench` (backend.Metered):
//
//   - redis_cmds: the commands Redis executed, from INFO commandstats, counting those
//     run inside scripts and the EVALSHA itself (INFO excluded). It counts every client
//     of the server (on Redis Cluster, of the master holding the prefix's slot), so
//     measure on a Redis of your own.
//   - redis_round_trips: the network round trips of every process on this prefix
//     (a pipeline of commands sent together is one), from the stats hash where each
//     process writes its counts every 100ms while they change, and at once when
//     Counters asks (it publishes on the stats channel and gives them 100ms).
//   - redis_calls: the commands and scripts those processes sent, before pipelining.
//
// The metering's own commands (INFO, the stats hash) are left out of all three.
func (b *Backend) Counters(ctx context.Context) (map[string]float64, error) {
	if err := b.rdb.Publish(ctx, b.k.statsChannel, "flush").Err(); err != nil {
		return nil, fmt.Errorf("redis: ask for stats: %w", err)
	}
	select {
	case <-time.After(100 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	info, err := b.server(ctx).Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis: INFO commandstats: %w", err)
	}
	cmds := 0.0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				cmds += n
			}
		}
	}
	all, err := b.rdb.HGetAll(ctx, b.k.stats).Result()
	if err != nil {
		return nil, fmt.Errorf("redis: read stats: %w", err)
	}
	b.meter.Add(2) // the PUBLISH and HGETALL above
	all[b.proc] = b.statsValue()
	trips, calls := 0.0, 0.0
	for _, v := range all {
		var t, c, m float64
		if _, err := fmt.Sscan(v, &t, &c, &m); err == nil {
			trips += t
			calls += c
			cmds -= m
		}
	}
	return map[string]float64{"redis_cmds": cmds, "redis_round_trips": trips, "redis_calls": calls}, nil
}

// server is the client of the server that holds the backend's keys: on Redis Cluster,
// the master of the prefix's slot.
func (b *Backend) server(ctx context.Context) goredis.Cmdable {
	if c, ok := b.rdb.(*goredis.ClusterClient); ok {
		if m, err := c.MasterForKey(ctx, b.k.stats); err == nil {
			return m
		}
	}
	return b.rdb
}

// statsValue is this process's entry in the stats hash: round trips, calls, and the
// commands the metering itself sent.
func (b *Backend) statsValue() string {
	return strconv.FormatInt(b.pipe.trips.Load(), 10) + " " + strconv.FormatInt(b.pipe.calls.Load(), 10) +
		" " + strconv.FormatInt(b.meter.Load(), 10)
}

// flushStats writes this process's counts to the stats hash every 100ms while they
// change, and when Counters asks (not counted themselves: they are the metering's own
// cost).
func (b *Backend) flushStats() {
	defer b.bg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := ""
	for {
		force := false
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.keepHandoff()
		case <-b.statsAsked:
			force = true
		}
		v := b.statsValue()
		if v == last && !force {
			continue
		}
		b.meter.Add(2) // this HSET and EXPIRE
		v = b.statsValue()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		pl := b.rdb.Pipeline()
		pl.HSet(ctx, b.k.stats, b.proc, v)
		pl.Expire(ctx, b.k.stats, 24*time.Hour)
		if _, err := pl.Exec(ctx); err == nil {
			last = v
		}
		cancel()
	}
}
