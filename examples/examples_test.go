package examples_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gallery "github.com/flowgen/flowgen/examples/gallery/nodes"
	"github.com/flowgen/flowgen/examples/generated/galleryflow"
	"github.com/flowgen/flowgen/examples/generated/moderationflow"
	"github.com/flowgen/flowgen/examples/generated/orderflow"
	moderation "github.com/flowgen/flowgen/examples/moderation/nodes"
	order "github.com/flowgen/flowgen/examples/order/nodes"
	"github.com/flowgen/flowgen/runtime"
)

// start opens a mem:// client with a worker running every example workflow.
func start(t *testing.T) (context.Context, *runtime.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := runtime.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	w := runtime.NewWorker(c, runtime.WithConcurrency(8))
	orderflow.Register(w)
	moderationflow.Register(w)
	galleryflow.Register(w)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
		c.Close()
		cancel()
	})
	return ctx, c
}

func TestOrderFulfillment(t *testing.T) {
	ctx, c := start(t)
	cases := []struct {
		order order.Order
		want  string
	}{
		{order.Order{ID: "1", Customer: "ada", Card: "visa", Items: []order.Item{{SKU: "a", Qty: 2, Cents: 1500}}},
			"Order 1: charged (3000 cents on visa)"},
		// Fails twice, succeeds on the third of its three attempts.
		{order.Order{ID: "2", Customer: "bob", Card: "flaky-visa", Items: []order.Item{{SKU: "b", Qty: 1, Cents: 400}}},
			"Order 2: charged (400 cents on flaky-visa)"},
		// A permanent failure: the fallback runs at once and continues to notify.
		{order.Order{ID: "3", Customer: "cy", Card: "declined", Items: []order.Item{{SKU: "c", Qty: 1, Cents: 100}}},
			"Order 3: deferred (charge deferred: card declined)"},
		{order.Order{ID: "4", Customer: "dee", Card: "visa", Items: []order.Item{{SKU: "d", Qty: 40, Cents: 10}}},
			"Order 4: in review (needs a person: stock or credit)"},
		{order.Order{ID: "5", Customer: "mallory", Card: "visa", Items: []order.Item{{SKU: "e", Qty: 1, Cents: 10}}},
			"Order 5: rejected (fraud score 1.00)"},
	}
	for _, tc := range cases {
		id, err := orderflow.StartOrderFulfillmentRun(ctx, c, tc.order)
		if err != nil {
			t.Fatal(err)
		}
		got, err := orderflow.AwaitOrderFulfillmentRun(ctx, c, id)
		if err != nil {
			t.Fatalf("order %s: %v", tc.order.ID, err)
		}
		want := order.Receipt{OrderID: tc.order.ID, Channel: "email", Message: tc.want}
		if got != want {
			t.Errorf("order %s: got %+v, want %+v", tc.order.ID, got, want)
		}
	}
}

func TestOrderFulfillmentConditionFalse(t *testing.T) {
	// A zero total approves, but the approve edge's condition (out.Total > 0) does not
	// hold: nothing reaches notify, which is skipped, and the run completes with a zero result.
	ctx, c := start(t)
	id, err := orderflow.StartOrderFulfillmentRun(ctx, c, order.Order{ID: "free", Customer: "eve", Card: "visa",
		Items: []order.Item{{SKU: "sample", Qty: 1, Cents: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := orderflow.AwaitOrderFulfillmentRun(ctx, c, id)
	if err != nil || got != (order.Receipt{}) {
		t.Fatalf("got %+v, %v; want the zero receipt", got, err)
	}
}

func TestOrderFulfillmentInvalidOrderFailsNamingTheNode(t *testing.T) {
	ctx, c := start(t)
	id, err := orderflow.StartOrderFulfillmentRun(ctx, c, order.Order{ID: "empty"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = orderflow.AwaitOrderFulfillmentRun(ctx, c, id)
	var re *runtime.RunError
	if !errors.As(err, &re) || re.Node != "validate" || !strings.Contains(re.Reason, "has no items") {
		t.Fatalf("got %v, want a failure at node validate", err)
	}
}

func TestContentModeration(t *testing.T) {
	ctx, c := start(t)
	cases := []struct {
		post moderation.Post
		want string
	}{
		{moderation.Post{ID: "p1", Author: "ann", Text: "hello"}, "p1: published"},
		{moderation.Post{ID: "p2", Author: "ben", Text: "darn it"}, "p2: redacted (mild word darn)"},
		{moderation.Post{ID: "p3", Author: "cal", Text: "look", Images: []string{"cat.jpg", "nsfw.jpg"}}, "p3: escalated (unsafe image nsfw.jpg)"},
		{moderation.Post{ID: "p4", Author: "dan", Text: "I will kill", Links: []string{"spam.example"}}, "p4: banned dan (severe word kill)"},
	}
	ids := make([]runtime.RunID, len(cases))
	for i, tc := range cases { // all in flight at once
		var err error
		if ids[i], err = moderationflow.StartContentModerationRun(ctx, c, tc.post); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range cases {
		got, err := moderationflow.AwaitContentModerationRun(ctx, c, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if got.Entry != tc.want {
			t.Errorf("post %s: %q, want %q", tc.post.ID, got.Entry, tc.want)
		}
	}
}

func TestGalleryBatchAndLoop(t *testing.T) {
	ctx, c := start(t)
	cases := []struct {
		album gallery.Album
		want  gallery.Gallery
	}{
		{gallery.Album{Name: "trip", Photos: []string{"e.jpg", "a.jpg", "d.jpg", "b.jpg", "c.jpg"}, TargetQuality: 3},
			gallery.Gallery{Title: "5 photos", Thumbs: []string{"e-thumb.jpg", "a-thumb.jpg", "d-thumb.jpg", "b-thumb.jpg", "c-thumb.jpg"}, Quality: 3, Passes: 3}},
		// The loop condition is false at once: the body never runs.
		{gallery.Album{Name: "one", Photos: []string{"x.jpg"}, TargetQuality: 0},
			gallery.Gallery{Title: "1 photos", Thumbs: []string{"x-thumb.jpg"}}},
		// An empty batch gathers an empty slice.
		{gallery.Album{Name: "none", TargetQuality: 1},
			gallery.Gallery{Title: "0 photos", Quality: 1, Passes: 1}},
	}
	for _, tc := range cases {
		id, err := galleryflow.StartGalleryRun(ctx, c, tc.album)
		if err != nil {
			t.Fatal(err)
		}
		got, err := galleryflow.AwaitGalleryRun(ctx, c, id)
		if err != nil {
			t.Fatalf("album %s: %v", tc.album.Name, err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("album %s: got %+v, want %+v", tc.album.Name, got, tc.want)
		}
	}
}

func TestGalleryLoopLimit(t *testing.T) {
	// maxIterations is 20 in the blueprint: a target of 50 fails the run at the loop.
	ctx, c := start(t)
	id, err := galleryflow.StartGalleryRun(ctx, c, gallery.Album{Name: "big", Photos: []string{"a.jpg"}, TargetQuality: 50})
	if err != nil {
		t.Fatal(err)
	}
	_, err = galleryflow.AwaitGalleryRun(ctx, c, id)
	var re *runtime.RunError
	if !errors.As(err, &re) || re.Node != "refine" || !strings.Contains(re.Reason, "20 iterations") {
		t.Fatalf("got %v, want a failure at the loop refine", err)
	}
}

// TestWorkerBinary builds the generated order worker, checks its help, and stops it
// with SIGTERM: it must exit 0 after a graceful stop.
func TestWorkerBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "orderflow-worker")
	if out, err := exec.Command("go", "build", "-o", bin, "./generated/cmd/orderflow-worker").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	help, _ := exec.Command(bin, "-h").CombinedOutput()
	for _, flag := range []string{"-backend", "-concurrency", "-reconcile-every", "-stalled-after", "-log-level", "FLOWGEN_BACKEND"} {
		if !bytes.Contains(help, []byte(flag)) {
			t.Errorf("help does not mention %s:\n%s", flag, help)
		}
	}
	cmd := exec.Command(bin, "-backend", "mem://", "-log-level", "debug")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "worker started") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker exit: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "worker stopped") {
		t.Errorf("no graceful stop in the log:\n%s", stderr.String())
	}
	_ = os.Remove(bin)
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
