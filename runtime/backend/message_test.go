package backend

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMessageRoundTrip(t *testing.T) {
	j := Job{ID: "j1", Run: "r/1", Workflow: "wf", Version: "v2", Kind: Fallback, Node: "n@1.2#3", From: "m",
		Attempt: 3, Priority: -2, NotBefore: time.Unix(0, 1_700_000_000_123_456_789), Err: "boom \"quoted\""}
	got, prior, err := DecodeMessage([]byte(EncodeMessage(j, 4)))
	if err != nil || prior != 4 || !reflect.DeepEqual(got, j) {
		t.Errorf("round trip: %+v, %d, %v; want %+v, 4", got, prior, err, j)
	}
	if s := EncodeMessage(Job{ID: "a", Run: "b"}, 0); s != `{"id":"a","run":"b"}` {
		t.Errorf("a bare job encodes as %s", s)
	}
	for _, bad := range []string{"", "not json", `{"id":"a"}`, `{"run":"b"}`} {
		if _, _, err := DecodeMessage([]byte(bad)); err == nil || !strings.Contains(err.Error(), "not a flowgen job") {
			t.Errorf("DecodeMessage(%q) = %v", bad, err)
		}
	}
}
