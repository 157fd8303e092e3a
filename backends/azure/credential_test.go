package azure

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/flowgen/flowgen/runtime"
)

// envQueueTLS names an Azurite queue service served over HTTPS, with its self-signed
// certificate, that takes bearer tokens (--oauth basic): its queue service URL.
const envQueueTLS = "FLOWGEN_TEST_AZURE_QUEUE_TLS"

// staticCred is a token credential that returns a fixed token and records the scopes
// asked for.
type staticCred struct {
	token  string
	calls  atomic.Int64
	mu     sync.Mutex
	scopes []string
}

func (c *staticCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	c.mu.Lock()
	for _, s := range o.Scopes {
		if !slices.Contains(c.scopes, s) {
			c.scopes = append(c.scopes, s)
		}
	}
	c.mu.Unlock()
	return azcore.AccessToken{Token: c.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (c *staticCred) asked(scope string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.scopes, scope)
}

// jwt is an unsigned token with the claims Azurite checks under --oauth basic
// (issuer, audience, lifetime; not the signature); the Cosmos DB emulator checks none.
func jwt(t *testing.T, exp time.Time) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now().Add(-time.Minute).Unix()
	return enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(map[string]any{
		"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
		"iat": now, "nbf": now, "exp": exp.Unix(), "oid": "00000000-0000-0000-0000-000000000001",
	}) + ".c2ln"
}

// endpointOf returns the AccountEndpoint of a Cosmos DB connection string.
func endpointOf(t *testing.T, conn string) string {
	t.Helper()
	for _, part := range strings.Split(conn, ";") {
		if v, ok := strings.CutPrefix(part, "AccountEndpoint="); ok {
			return v
		}
	}
	t.Fatalf("no AccountEndpoint in %q", conn)
	return ""
}

// insecureQueues makes the queue clients of the backends New opens accept the test
// Azurite's self-signed certificate, until the test ends.
func insecureQueues(t *testing.T) {
	queueTransport = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // test emulator
	}}
	t.Cleanup(func() { queueTransport = nil })
}

// openCred opens a backend on fresh resources with the test URL's options changed by
// edit, dropped when the test ends.
func openCred(t *testing.T, edit func(*Options), extra ...string) *Backend {
	t.Helper()
	o, err := ParseURL(freshURL(extra...))
	if err != nil {
		t.Fatal(err)
	}
	edit(&o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := New(ctx, o)
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
	return b
}

// runChain runs a workflow of three nodes to completion through the backend's queue.
func runChain(t *testing.T, b *Backend) {
	t.Helper()
	c := runtime.New(b)
	var execs atomic.Int64
	wf := chain("cred", 3, "", &execs)
	w := runtime.NewWorker(c)
	w.Register(wf)
	ctx := context.Background()
	id, err := runtime.Start(ctx, c, wf, 1)
	if err != nil {
		t.Fatal(err)
	}
	trigger(t, b.queue, w, func() bool {
		info, err := c.Status(ctx, id)
		return err == nil && info.Status != "running"
	})
	res, err := runtime.Await(ctx, c, id)
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ V int }
	if err := json.Unmarshal(res, &out); err != nil || out.V != 4 || execs.Load() != 3 {
		t.Errorf("result %s after %d executions, want v=4 after 3", res, execs.Load())
	}
}

// Cosmos DB through cosmos_endpoint= and a token credential: the HTTPS emulator ignores
// the token, so this proves that the token path is wired (the credential is asked for
// the account's scope) and keeps cosmos_insecure_tls=1 and the meter.
func TestTokenCredentialCosmos(t *testing.T) {
	tlsConn := os.Getenv(envTLS)
	if tlsConn == "" {
		t.Fatalf("%s is not set.\n%s", envTLS, startHint)
	}
	ep := endpointOf(t, tlsConn)
	cred := &staticCred{token: jwt(t, time.Now().Add(time.Hour))}
	b := openCred(t, func(o *Options) {
		o.Cosmos, o.CosmosEndpoint, o.Credential = "", ep, cred
	}, "cosmos_insecure_tls", "1")
	if b.cosmos.Endpoint() != ep {
		t.Errorf("Cosmos client endpoint %s, want %s", b.cosmos.Endpoint(), ep)
	}
	runChain(t, b)
	if cred.calls.Load() == 0 || !cred.asked("https://127.0.0.1/.default") {
		t.Errorf("GetToken called %d times for %v; want the Cosmos account's scope", cred.calls.Load(), cred.scopes)
	}
	m, err := b.Counters(context.Background())
	if err != nil || m["cosmos_calls"] == 0 {
		t.Errorf("Counters = %v, %v; want Cosmos calls metered", m, err)
	}
}

// The queues through queue_endpoint= and a token credential, against an Azurite over
// HTTPS that checks the bearer token's claims (azcore sends no token over plain http):
// a run completes; an expired token is refused.
func TestTokenCredentialQueue(t *testing.T) {
	qep := os.Getenv(envQueueTLS)
	if qep == "" {
		t.Fatalf("%s is not set: it names an Azurite queue service over HTTPS with --oauth basic.\n%s", envQueueTLS, startHint)
	}
	insecureQueues(t)
	cred := &staticCred{token: jwt(t, time.Now().Add(time.Hour))}
	b := openCred(t, func(o *Options) {
		o.Storage, o.QueueEndpoint, o.Credential = "", qep, cred
	})
	if want := qep + b.opts.Queue; b.queue.URL() != want {
		t.Errorf("queue URL %s, want %s", b.queue.URL(), want)
	}
	runChain(t, b)
	if cred.calls.Load() == 0 || !cred.asked("https://storage.azure.com/.default") {
		t.Errorf("GetToken called %d times for %v; want the Storage scope", cred.calls.Load(), cred.scopes)
	}
	m, err := b.Counters(context.Background())
	if err != nil || m["azure_queue_calls"] == 0 {
		t.Errorf("Counters = %v, %v; want queue calls metered", m, err)
	}

	// Azurite does check the token: an expired one cannot create the queues.
	o, err := ParseURL(freshURL())
	if err != nil {
		t.Fatal(err)
	}
	o.Storage, o.QueueEndpoint, o.Credential = "", qep, &staticCred{token: jwt(t, time.Now().Add(-time.Minute))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if bad, err := New(ctx, o); err == nil {
		_ = cleanup(ctx, bad)
		t.Error("New with an expired token created the queues")
	} else if code := statusCode(err); code != 401 && code != 403 {
		t.Errorf("New with an expired token: %v; want 401 or 403", err)
	}
}

// Both services through their endpoints, with one credential.
func TestTokenCredentialBoth(t *testing.T) {
	qep, tlsConn := os.Getenv(envQueueTLS), os.Getenv(envTLS)
	if qep == "" || tlsConn == "" {
		t.Fatalf("%s or %s is not set.\n%s", envQueueTLS, envTLS, startHint)
	}
	insecureQueues(t)
	cred := &staticCred{token: jwt(t, time.Now().Add(time.Hour))}
	b := openCred(t, func(o *Options) {
		o.Storage, o.QueueEndpoint = "", qep
		o.Cosmos, o.CosmosEndpoint = "", endpointOf(t, tlsConn)
		o.Credential = cred
	}, "cosmos_insecure_tls", "1")
	runChain(t, b)
	if !cred.asked("https://storage.azure.com/.default") || !cred.asked("https://127.0.0.1/.default") {
		t.Errorf("GetToken scopes %v; want Storage's and the Cosmos account's", cred.scopes)
	}
}

// A connection string wins over an endpoint: the credential is never asked.
func TestConnectionStringWins(t *testing.T) {
	cred := &staticCred{token: "unused"}
	b := openCred(t, func(o *Options) {
		o.QueueEndpoint, o.CosmosEndpoint = "https://nowhere.invalid/", "https://nowhere.invalid:443/"
		o.Credential = cred
	})
	if strings.Contains(b.queue.URL(), "nowhere") || strings.Contains(b.cosmos.Endpoint(), "nowhere") {
		t.Errorf("queue %s, Cosmos %s: want the connection strings' endpoints", b.queue.URL(), b.cosmos.Endpoint())
	}
	if n := cred.calls.Load(); n != 0 {
		t.Errorf("GetToken called %d times with connection strings", n)
	}
}

// Without a credential, New takes azidentity's DefaultAzureCredential for the endpoints
// (nothing is sent without create=1, so no token is needed here).
func TestDefaultCredential(t *testing.T) {
	o, err := ParseURL(freshURL("create", "0"))
	if err != nil {
		t.Fatal(err)
	}
	o.Storage, o.QueueEndpoint = "", "https://example.queue.core.windows.net"
	o.Cosmos, o.CosmosEndpoint = "", "https://example.documents.azure.com:443/"
	b, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if want := "https://example.queue.core.windows.net/" + o.Queue; b.queue.URL() != want {
		t.Errorf("queue URL %s, want %s", b.queue.URL(), want)
	}
	if want := "https://example.queue.core.windows.net/" + o.Poison; b.poison.URL() != want {
		t.Errorf("poison queue URL %s, want %s", b.poison.URL(), want)
	}
	if b.cosmos.Endpoint() != o.CosmosEndpoint {
		t.Errorf("Cosmos endpoint %s, want %s", b.cosmos.Endpoint(), o.CosmosEndpoint)
	}
}

func TestParseURLEndpoints(t *testing.T) {
	for _, k := range []string{EnvStorage, EnvCosmos, EnvQueueEndpoint, EnvCosmosEndpoint} {
		t.Setenv(k, "")
	}
	o, err := ParseURL("azure://?queue_endpoint=https%3A%2F%2Fa.queue.core.windows.net%2F&cosmos_endpoint=https%3A%2F%2Fa.documents.azure.com%3A443%2F")
	if err != nil || o.QueueEndpoint != "https://a.queue.core.windows.net/" || o.CosmosEndpoint != "https://a.documents.azure.com:443/" ||
		o.Storage != "" || o.Cosmos != "" || o.Credential != nil {
		t.Errorf("ParseURL = %+v, %v", o, err)
	}

	// The environment fills in what the URL leaves out; the URL wins.
	t.Setenv(EnvQueueEndpoint, "https://env.queue.core.windows.net/")
	t.Setenv(EnvCosmosEndpoint, "https://env.documents.azure.com:443/")
	o, err = ParseURL("azure://?cosmos_endpoint=https%3A%2F%2Furl.documents.azure.com%2F")
	if err != nil || o.QueueEndpoint != "https://env.queue.core.windows.net/" || o.CosmosEndpoint != "https://url.documents.azure.com/" {
		t.Errorf("ParseURL with the environment = %+v, %v", o, err)
	}

	// Both read: New prefers the connection string (TestConnectionStringWins).
	t.Setenv(EnvStorage, "QueueEndpoint=http://q/acct;")
	o, err = ParseURL("azure://?queue_endpoint=https%3A%2F%2Furl.queue.core.windows.net%2F")
	if err != nil || o.Storage != "QueueEndpoint=http://q/acct;" || o.QueueEndpoint != "https://url.queue.core.windows.net/" {
		t.Errorf("ParseURL with a connection string in the environment = %+v, %v", o, err)
	}

	for _, bad := range []string{"queue_endpoint=ftp%3A%2F%2Fx", "cosmos_endpoint=not-a-url", "queue_endpoint=https%3A%2F%2Fa%2F%3Fsig%3Dx", "cosmos_endpoint="} {
		if _, err := ParseURL("azure://?" + bad); err == nil {
			t.Errorf("ParseURL(%s) succeeded", bad)
		}
	}
	t.Setenv(EnvCosmosEndpoint, "cosmos.example")
	if _, err := ParseURL("azure://"); err == nil || !strings.Contains(err.Error(), "cosmos_endpoint") {
		t.Errorf("ParseURL with a bad %s: %v", EnvCosmosEndpoint, err)
	}
}

// New names what is missing.
func TestNewMissing(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want []string
	}{
		{Options{Cosmos: "x", Redis: "redis://r"}, []string{"queue endpoint", "storage=", "queue_endpoint=", EnvStorage, EnvQueueEndpoint}},
		{Options{QueueEndpoint: "https://a/", Redis: "redis://r"}, []string{"Cosmos DB", "cosmos=", "cosmos_endpoint=", EnvCosmos, EnvCosmosEndpoint}},
		{Options{Storage: "x", CosmosEndpoint: "https://a/"}, []string{"redis=", EnvRedis}},
	} {
		_, err := New(context.Background(), c.o)
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("New(%+v) = %v; want an error naming %s", c.o, err, w)
			}
		}
	}
}
