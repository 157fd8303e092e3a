package azure

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/runtime/backend"
)

// The tests need Azure Queue Storage, Cosmos DB and Redis servers: FLOWGEN_TEST_AZURE is
// an azure:// URL that names them with storage=, cosmos= and redis= (scripts/services.sh
// start azure starts Azurite, cosmosdb-server and redis-server on loopback and prints
// it). Each test works on queues, containers and a Redis prefix of its own, deleted
// when it ends; the containers share the database testDatabase.

const (
	envURL       = "FLOWGEN_TEST_AZURE"
	envTLS       = "FLOWGEN_TEST_AZURE_TLS"
	testDatabase = "flowgentest"
	startHint    = "Start local servers (Azurite and cosmosdb-server from npm, redis-server) and point the tests at them with\n" +
		"\teval \"$(scripts/services.sh start azure)\"\n"
)

// TestMain fails the package at once, with what to do, when there is no server: these
// tests are never skipped.
func TestMain(m *testing.M) {
	if os.Getenv(envURL) == "" {
		fmt.Fprintf(os.Stderr, "FAIL: %s is not set: the azure backend's tests need Azure Queue Storage, Cosmos DB and Redis servers.\n%s", envURL, startHint)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	b, rawURL, err := openFresh(ctx)
	if err == nil {
		err = cleanup(ctx, b)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s=%s does not work: %v\n%s", envURL, rawURL, err, startHint)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// freshURL returns the test URL with queue and container names and a Redis prefix of a
// new unique name, and create=1; extra are more query parameters.
func freshURL(extra ...string) string {
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	p := "t" + hex.EncodeToString(rnd[:])
	u, err := url.Parse(os.Getenv(envURL))
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set("queue", p+"-jobs")
	q.Set("database", testDatabase)
	q.Set("contexts", p+"-contexts")
	q.Set("statuses", p+"-statuses")
	q.Set("prefix", "flowgen:test:"+p+":")
	q.Set("create", "1")
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func openFresh(ctx context.Context, extra ...string) (*Backend, string, error) {
	u := freshURL(extra...)
	b, err := Open(ctx, u)
	return b, u, err
}

// cleanup drops the backend's queues and containers, deletes its Redis keys and
// closes it.
func cleanup(ctx context.Context, b *Backend) error {
	err := b.drop(ctx)
	if ropts, perr := goredis.ParseURL(b.opts.Redis); perr == nil {
		rdb := goredis.NewClient(ropts)
		iter := rdb.Scan(ctx, 0, b.opts.Prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			rdb.Unlink(ctx, keys...)
		}
		_ = rdb.Close()
	}
	b.Close()
	return err
}

// open returns a backend on fresh resources, dropped when the test ends, and its URL.
func open(t testing.TB, extra ...string) (*Backend, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, u, err := openFresh(ctx, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cleanup(ctx, b); err != nil {
			t.Logf("drop the test's queues and containers: %v", err)
		}
	})
	return b, u
}

// TestConformance runs the shared backend suite, each case on resources of its own.
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			b, u := open(t)
			return b, u
		},
		MaxValueSize: MaxValueSize,
		Durable:      true,
		Unordered:    true,
		MinLease:     time.Second,
	})
}
