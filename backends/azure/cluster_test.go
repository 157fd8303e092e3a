package azure

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/runtime"
)

// TestRedisCluster runs a workflow with its coordination on a Redis Cluster of three
// masters (FLOWGEN_TEST_REDIS_CLUSTER; scripts/services.sh start redis-cluster): the
// prefix becomes a hash tag, so every coordination key shares one slot.
func TestRedisCluster(t *testing.T) {
	cu := os.Getenv("FLOWGEN_TEST_REDIS_CLUSTER")
	if cu == "" {
		t.Fatal("FLOWGEN_TEST_REDIS_CLUSTER is not set: start a cluster with\n\teval \"$(scripts/services.sh start redis-cluster)\"")
	}
	b, _ := open(t, "redis", cu)
	c := runtime.New(b)
	var execs atomic.Int64
	wf := chain("cluster", 4, "", &execs)
	w := runtime.NewWorker(c)
	w.Register(wf)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ V int }
	if err := json.Unmarshal(res, &out); err != nil || out.V != 5 || execs.Load() != 4 {
		t.Errorf("result %s (%v) after %d executions; want v=5 after 4", res, err, execs.Load())
	}

	// The run's keys are on the cluster, under the prefix made a hash tag.
	u, _ := url.Parse(cu)
	q := u.Query()
	q.Del("cluster")
	u.RawQuery = q.Encode()
	copts, err := goredis.ParseClusterURL(u.String())
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClusterClient(copts)
	defer rdb.Close()
	tag := "{" + strings.TrimSuffix(b.opts.Prefix, ":") + "}:"
	var found atomic.Int64
	err = rdb.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		keys, err := m.Keys(ctx, strings.NewReplacer("{", `\{`, "}", `\}`).Replace(tag)+"*").Result()
		found.Add(int64(len(keys)))
		if len(keys) > 0 {
			m.Del(ctx, keys...)
		}
		return err
	})
	if err != nil || found.Load() == 0 {
		t.Errorf("keys under %s on the cluster: %d (%v); want the run's", tag, found.Load(), err)
	}
}
