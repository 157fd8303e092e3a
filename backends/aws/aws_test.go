package aws

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/flowgen/flowgen/backends/backendtest"
	"github.com/flowgen/flowgen/runtime/backend"
)

// The tests need an SQS and a DynamoDB server: FLOWGEN_TEST_AWS is an aws:// URL that
// names them (scripts/services.sh start aws starts dynalite and local-aws-sqs on
// loopback and prints it). Each test works on queues and tables of its own, with a
// unique name prefix, deleted when it ends.

const envURL = "FLOWGEN_TEST_AWS"

// TestMain fails the package at once, with what to do, when there is no server: these
// tests are never skipped.
func TestMain(m *testing.M) {
	u := os.Getenv(envURL)
	if u == "" {
		fmt.Fprintf(os.Stderr, "FAIL: %s is not set: the aws backend's tests need SQS and DynamoDB servers.\n"+
			"Start local ones (dynalite and local-aws-sqs, from npm) and point the tests at them with\n"+
			"\teval \"$(scripts/services.sh start aws)\"\n", envURL)
		os.Exit(1)
	}
	// The local servers accept any credentials; the SDK wants some. Worker processes
	// started by the suite inherit them.
	if os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		os.Setenv("AWS_ACCESS_KEY_ID", "local")
		os.Setenv("AWS_SECRET_ACCESS_KEY", "local")
	}
	if os.Getenv("AWS_REGION") == "" {
		os.Setenv("AWS_REGION", "us-east-1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	b, rawURL, err := openFresh(ctx)
	if err == nil {
		err = b.drop(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s=%s does not work: %v\nStart local servers with\n\teval \"$(scripts/services.sh start aws)\"\n",
			envURL, rawURL, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// freshURL returns the test URL with queue and table names of a new unique prefix, and
// create=1.
func freshURL() string {
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	p := "t" + hex.EncodeToString(rnd[:])
	u, err := url.Parse(os.Getenv(envURL))
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set("queue", p+"-jobs")
	q.Set("dlq", p+"-dlq")
	q.Set("contexts", p+"-contexts")
	q.Set("statuses", p+"-statuses")
	q.Set("coordination", p+"-coordination")
	q.Set("create", "1")
	u.RawQuery = q.Encode()
	return u.String()
}

func openFresh(ctx context.Context) (*Backend, string, error) {
	u := freshURL()
	b, err := Open(ctx, u)
	return b, u, err
}

// open returns a backend on fresh resources, dropped when the test ends, and its URL;
// extra is appended to the URL's query.
func open(t testing.TB, extra ...string) (*Backend, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := freshURL()
	for _, e := range extra {
		u += "&" + e
	}
	b, err := Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.drop(ctx); err != nil {
			t.Logf("drop the test's queues and tables: %v", err)
		}
		b.Close()
	})
	return b, u
}

// TestConformance runs the shared backend suite, each case on queues and tables of its own.
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
