package backend

import (
	"bytes"
	"testing"
)

func TestSnapshot(t *testing.T) {
	s := NewSnapshot(&Run{ID: "r"}, map[string][]byte{"a": []byte("1"), "n": []byte("5"), "gone": []byte("x")})
	if ok, _ := s.PutIfAbsent("a", []byte("2")); ok {
		t.Error("PutIfAbsent overwrote a loaded key")
	}
	if ok, _ := s.PutIfAbsent("b", nil); !ok {
		t.Error("PutIfAbsent did not store a new key")
	}
	if ok, _ := s.PutIfAbsent("b", []byte("again")); ok {
		t.Error("PutIfAbsent overwrote a key written in the same transition")
	}
	if n, _ := s.Incr("n", 2); n != 7 {
		t.Errorf("Incr = %d, want 7", n)
	}
	if n, _ := s.Incr("new", 0); n != 0 {
		t.Errorf("Incr of an absent key = %d, want 0", n)
	}
	_ = s.Delete("gone")
	s.Enqueue(Job{ID: "j"})
	vals, _ := s.Get("a", "b", "n", "gone", "new")
	if string(vals[0]) != "1" || vals[1] == nil || len(vals[1]) != 0 || string(vals[2]) != "7" || vals[3] != nil || vals[4] != nil {
		t.Errorf("Get = %q", vals)
	}
	changes, jobs := s.Changes()
	want := []Change{{"b", []byte{}}, {"n", []byte("7")}, {"gone", nil}}
	if len(changes) != len(want) {
		t.Fatalf("changes = %+v, want %+v", changes, want)
	}
	for i := range want {
		if changes[i].Key != want[i].Key || !bytes.Equal(changes[i].Value, want[i].Value) || (changes[i].Value == nil) != (want[i].Value == nil) {
			t.Errorf("change %d = %+v, want %+v", i, changes[i], want[i])
		}
	}
	if len(jobs) != 1 || jobs[0].ID != "j" {
		t.Errorf("jobs = %+v", jobs)
	}
}
