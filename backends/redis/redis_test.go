package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/runtime/backend"
)

// The tests need a Redis server: FLOWGEN_TEST_REDIS is its URL, e.g.
// redis://127.0.0.1:6390/0. Each test works under a key prefix of its own, whose keys
// are deleted when it ends. A few tests start redis-server themselves (restarts, TLS,
// passwords), which must then be on the PATH.

const envURL = "FLOWGEN_TEST_REDIS"

// envClusterURL names a Redis Cluster (scripts/services.sh start redis-cluster).
const envClusterURL = "FLOWGEN_TEST_REDIS_CLUSTER"

// TestMain fails the package at once, with what to do, when there is no server: these
// tests are never skipped.
func TestMain(m *testing.M) {
	for _, env := range []string{envURL, envClusterURL} {
		u := os.Getenv(env)
		if u == "" {
			fmt.Fprintf(os.Stderr, "FAIL: %s is not set: the redis backend's tests need a Redis server and a Redis Cluster.\n"+
				"Start throwaway ones and point the tests at them with\n"+
				"\teval \"$(scripts/services.sh start redis redis-cluster)\"\n"+
				"or run everything with scripts/dev.sh test.\n", env)
			os.Exit(1)
		}
		c, err := client(u)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = c.Ping(ctx).Err()
			cancel()
			c.Close()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: %s=%s does not answer: %v\n"+
				"Start throwaway servers with\n\teval \"$(scripts/services.sh start redis redis-cluster)\"\n", env, u, err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// client is a go-redis client for a test server's URL (cluster=true: a cluster client).
func client(rawURL string) (goredis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	_, ca, cluster, err := parseOptions(u)
	if err != nil {
		return nil, err
	}
	return newClient(u, cluster, ca)
}

var nameChars = regexp.MustCompile(`[^A-Za-z0-9]+`)

// testURL returns the URL of a fresh backend for t on the test server: a prefix of its
// own, whose keys are deleted when the test ends, and query options q.
func testURL(t testing.TB, q ...string) string {
	t.Helper()
	return prefixedURL(t, os.Getenv(envURL), q...)
}

// prefixedURL adds a fresh prefix for t and the options q to base.
func prefixedURL(t testing.TB, base string, q ...string) string {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := nameChars.ReplaceAllString(t.Name(), "_")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	prefix := "t:" + name + ":" + hex.EncodeToString(rnd[:]) + ":"
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	if u.Query().Has("cluster") {
		prefix = "{" + strings.TrimSuffix(prefix, ":") + "}:"
	}
	vals := u.Query()
	vals.Set("prefix", prefix)
	for _, kv := range q {
		k, v, _ := strings.Cut(kv, "=")
		vals.Set(k, v)
	}
	u.RawQuery = vals.Encode()
	t.Cleanup(func() { deleteKeys(t, base, prefix) })
	return u.String()
}

// deleteKeys deletes the keys under prefix (tests only: it SCANs every server).
func deleteKeys(t testing.TB, base, prefix string) {
	c, err := client(base)
	if err != nil {
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pattern := strings.NewReplacer("*", `\*`, "?", `\?`, "[", `\[`, "{", `\{`, "}", `\}`).Replace(prefix) + "*"
	del := func(ctx context.Context, c goredis.Cmdable) error {
		// The keys of one prefix share a slot on a cluster, so one DEL can take many.
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			if keys = append(keys, iter.Val()); len(keys) == 500 {
				c.Del(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
		return iter.Err()
	}
	if cc, ok := c.(*goredis.ClusterClient); ok {
		_ = cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error { return del(ctx, m) })
		return
	}
	_ = del(ctx, c)
}

// openT opens a backend on rawURL, closed when the test ends.
func openT(t testing.TB, rawURL string) *Backend {
	t.Helper()
	b, err := Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("open %s: %v", rawURL, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// newBackend opens a fresh backend on the test server.
func newBackend(t testing.TB, q ...string) *Backend {
	t.Helper()
	return openT(t, testURL(t, q...))
}

// TestConformance runs the shared conformance suite, every tier.
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			u := testURL(t, "maxvalue=1048576")
			return openT(t, u), u
		},
		MaxValueSize: 1 << 20,
		Durable:      true,
	})
}

// TestClusterConformance runs the conformance suite on a Redis Cluster of three
// masters, with the prefix's hash tag holding every key of the backend in one slot.
func TestClusterConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		Open: func(t *testing.T) (backend.Backend, string) {
			u := prefixedURL(t, os.Getenv(envClusterURL), "maxvalue=1048576")
			return openT(t, u), u
		},
		MaxValueSize: 1 << 20,
		Durable:      true,
	})
}

// server is a redis-server a test started.
type server struct {
	t    *testing.T
	dir  string
	port int
	args []string
	cmd  *exec.Cmd
}

// startServer starts a redis-server on a free port of 127.0.0.1 with its data in a
// temp dir, stopped when the test ends. args are added to the command line.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("this test starts its own redis-server, which is not on the PATH: %v (Debian: apt-get install redis-server)", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{t: t, dir: t.TempDir(), port: port, args: args}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	s.t.Helper()
	args := append([]string{"--bind", "127.0.0.1", "--port", fmt.Sprint(s.port), "--dir", s.dir,
		"--save", "", "--daemonize", "no"}, s.args...)
	s.cmd = exec.Command("redis-server", args...)
	out, err := os.Create(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); out.Close() }(s.cmd)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server did not start: %v\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the server gracefully (SIGTERM: it writes its append-only file when it
// has one) and waits until its port is free.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd = nil
}

func (s *server) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }
