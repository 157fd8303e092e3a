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

// TestMain fails the package at once, with what to do, when there is no server: these
// tests are never skipped.
func TestMain(m *testing.M) {
	u := os.Getenv(envURL)
	if u == "" {
		fmt.Fprintf(os.Stderr, "FAIL: %s is not set: the redis backend's tests need a Redis server.\n"+
			"Start a throwaway one and point the tests at it with\n"+
			"\teval \"$(scripts/services.sh start redis)\"\n"+
			"or run everything with scripts/dev.sh test.\n", envURL)
		os.Exit(1)
	}
	opts, err := goredis.ParseURL(u)
	if err == nil {
		c := goredis.NewClient(opts)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = c.Ping(ctx).Err()
		cancel()
		c.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s=%s does not answer: %v\n"+
			"Start a throwaway server with\n\teval \"$(scripts/services.sh start redis)\"\n", envURL, u, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
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

// deleteKeys deletes the keys under prefix (tests only: it SCANs).
func deleteKeys(t testing.TB, base, prefix string) {
	opts, err := goredis.ParseURL(base)
	if err != nil {
		return
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, strings.NewReplacer("*", `\*`, "?", `\?`, "[", `\[`).Replace(prefix)+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 1000 {
			c.Del(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		c.Del(ctx, keys...)
	}
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
