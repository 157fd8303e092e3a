package backendtest

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	gallery "github.com/flowgen/flowgen/examples/gallery/nodes"
	"github.com/flowgen/flowgen/examples/generated/galleryflow"
	"github.com/flowgen/flowgen/examples/generated/moderationflow"
	"github.com/flowgen/flowgen/examples/generated/orderflow"
	moderation "github.com/flowgen/flowgen/examples/moderation/nodes"
	order "github.com/flowgen/flowgen/examples/order/nodes"
	"github.com/flowgen/flowgen/runtime"
)

// Cases of the generated example workflows, through their typed Start and Await.

// examples returns a client on a fresh backend with a worker running every example
// workflow.
func (s *suite) examples(t *testing.T) (context.Context, *runtime.Client) {
	t.Helper()
	c := s.client(t)
	w := runtime.NewWorker(c, append(s.fastWorker(), runtime.WithLogger(testLogger(t)))...)
	orderflow.Register(w)
	moderationflow.Register(w)
	galleryflow.Register(w)
	runWorker(t, w)
	return ctxT(t), c
}

func (s *suite) exampleOrderFulfillment(t *testing.T) {
	ctx, c := s.examples(t)
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
	ids := make([]runtime.RunID, len(cases))
	for i, tc := range cases { // all in flight at once
		var err error
		if ids[i], err = orderflow.StartOrderFulfillmentRun(ctx, c, tc.order); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range cases {
		got, err := orderflow.AwaitOrderFulfillmentRun(ctx, c, ids[i])
		if err != nil {
			t.Fatalf("order %s: %v", tc.order.ID, err)
		}
		want := order.Receipt{OrderID: tc.order.ID, Channel: "email", Message: tc.want}
		if got != want {
			t.Errorf("order %s: got %+v, want %+v", tc.order.ID, got, want)
		}
	}
}

func (s *suite) exampleOrderConditionFalse(t *testing.T) {
	// A zero total approves, but the approve edge's condition (out.Total > 0) does not
	// hold: nothing reaches notify, which is skipped, and the run completes with a zero
	// result.
	ctx, c := s.examples(t)
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

func (s *suite) exampleOrderInvalid(t *testing.T) {
	ctx, c := s.examples(t)
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

// moderationCases are posts of the content-moderation example, one per branch of its
// triage, and the audit entry each gets (before the post id).
var moderationCases = []struct {
	post  moderation.Post
	entry string
}{
	{moderation.Post{Author: "ann", Text: "hello"}, "published"},
	{moderation.Post{Author: "ben", Text: "darn it"}, "redacted (mild word darn)"},
	{moderation.Post{Author: "cal", Text: "look", Images: []string{"cat.jpg", "nsfw.jpg"}}, "escalated (unsafe image nsfw.jpg)"},
	{moderation.Post{Author: "dan", Text: "I will kill", Links: []string{"spam.example"}}, "banned dan (severe word kill)"},
}

// moderationPost is the i-th post of a run of posts cycling through moderationCases,
// with id as its id, and the audit entry it must get.
func moderationPost(i int, id string) (moderation.Post, string) {
	tc := moderationCases[i%len(moderationCases)]
	p := tc.post
	p.ID = id
	return p, id + ": " + tc.entry
}

func (s *suite) exampleContentModeration(t *testing.T) {
	ctx, c := s.examples(t)
	const runs = 8
	ids := make([]runtime.RunID, runs)
	for i := range ids { // all in flight at once
		post, _ := moderationPost(i, "p"+string(rune('a'+i)))
		var err error
		if ids[i], err = moderationflow.StartContentModerationRun(ctx, c, post); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		_, want := moderationPost(i, "p"+string(rune('a'+i)))
		got, err := moderationflow.AwaitContentModerationRun(ctx, c, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Entry != want {
			t.Errorf("run %s: %q, want %q", id, got.Entry, want)
		}
	}
}

func (s *suite) exampleGallery(t *testing.T) {
	ctx, c := s.examples(t)
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

func (s *suite) exampleGalleryLoopLimit(t *testing.T) {
	// maxIterations is 20 in the blueprint: a target of 50 fails the run at the loop.
	ctx, c := s.examples(t)
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
