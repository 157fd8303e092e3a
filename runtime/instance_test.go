package runtime

import (
	"reflect"
	"testing"
)

func TestInstanceKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		key string
		in  instance
	}{
		{"node", instance{node: "node", item: -1}},
		{"node@2", instance{node: "node", scope: []int{2}, item: -1}},
		{"node@1.0", instance{node: "node", scope: []int{1, 0}, item: -1}},
		{"scatter#3", instance{node: "scatter", item: 3}},
		{"scatter@4#0", instance{node: "scatter", scope: []int{4}, item: 0}},
		{"check-order_2", instance{node: "check-order_2", item: -1}},
	} {
		got, err := parseInstance(tc.key)
		if err != nil {
			t.Errorf("parseInstance(%q): %v", tc.key, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.in) {
			t.Errorf("parseInstance(%q) = %+v, want %+v", tc.key, got, tc.in)
		}
		if k := tc.in.key(); k != tc.key {
			t.Errorf("%+v.key() = %q, want %q", tc.in, k, tc.key)
		}
	}
	if k := nodeInstance("a").key(); k != "a" {
		t.Errorf("nodeInstance(a).key() = %q", k)
	}
}

func TestParseInstanceRejects(t *testing.T) {
	for _, key := range []string{"", "@1", "#2", "n@", "n#", "n@x", "n@1.", "n@.1", "n#-1", "n@-1", "n#1#2x", "n@1#x"} {
		if in, err := parseInstance(key); err == nil {
			t.Errorf("parseInstance(%q) = %+v, want an error", key, in)
		}
	}
}

func TestInstanceIteration(t *testing.T) {
	for _, tc := range []struct {
		in   instance
		want int
	}{
		{instance{node: "a", item: -1}, 0},
		{instance{node: "a", scope: []int{3}, item: -1}, 3},
		{instance{node: "a", scope: []int{3, 7}, item: -1}, 7},
	} {
		if got := tc.in.iteration(); got != tc.want {
			t.Errorf("%s.iteration() = %d, want %d", tc.in.key(), got, tc.want)
		}
	}
}

// loopNodes is
//
//	init -> outer -continue-> p -> inner -continue-> b -> inner
//	                               inner -break-> q -> outer
//	        outer -break-> exit
func loopNodes() map[string]*Node {
	return map[string]*Node{
		"init":  {ID: "init"},
		"outer": {ID: "outer", Kind: KindLoop, Loop: "outer", Depth: 1},
		"p":     {ID: "p", Loop: "outer", Depth: 1},
		"inner": {ID: "inner", Kind: KindLoop, Loop: "inner", Depth: 2},
		"b":     {ID: "b", Loop: "inner", Depth: 2},
		"q":     {ID: "q", Loop: "outer", Depth: 1},
		"exit":  {ID: "exit"},
	}
}

func TestInstanceSuccessor(t *testing.T) {
	n := loopNodes()
	for _, tc := range []struct {
		from, to string
		fromKey  string
		want     string
	}{
		{"init", "outer", "init", "outer@0"},         // entering a loop starts iteration 0
		{"outer", "p", "outer@2", "p@2"},             // inside the loop: same iteration
		{"p", "inner", "p@2", "inner@2.0"},           // entering a nested loop starts it at 0
		{"inner", "b", "inner@2.5", "b@2.5"},         // inner body
		{"b", "inner", "b@2.5", "inner@2.6"},         // back edge: next iteration
		{"b", "inner", "b@10.99", "inner@10.100"},    // numbers grow past one digit
		{"inner", "q", "inner@2.6", "q@2"},           // leaving the inner loop
		{"b", "q", "b@4.1", "q@4"},                   // leaving it from its body
		{"q", "outer", "q@2", "outer@3"},             // outer back edge
		{"outer", "exit", "outer@3", "exit"},         // leaving the outer loop
		{"inner", "exit", "inner@3.4", "exit"},       // leaving both loops at once
		{"p", "q", "p@0", "q@0"},                     // sibling in the outer body
		{"init", "exit", "init", "exit"},             // no loops at all
		{"outer", "outer", "outer@1", "outer@1"},     // a controller is not its own back edge
		{"inner", "inner", "inner@1.1", "inner@1.1"}, // nor is a nested one
	} {
		from, err := parseInstance(tc.fromKey)
		if err != nil {
			t.Fatal(err)
		}
		got := from.successor(n[tc.from], n[tc.to]).key()
		if got != tc.want {
			t.Errorf("%s -> %s from %s = %s, want %s", tc.from, tc.to, tc.fromKey, got, tc.want)
		}
		if from.key() != tc.fromKey {
			t.Errorf("successor changed its receiver: %s became %s", tc.fromKey, from.key())
		}
	}
}

func TestInstanceAt(t *testing.T) {
	n := loopNodes()
	for _, tc := range []struct {
		key, node, want string
	}{
		{"b@2.5", "init", "init"}, // a source outside the loops
		{"b@2.5", "p", "p@2"},     // a source in the outer body
		{"b@2.5", "inner", "inner@2.5"},
		{"q@2", "inner", "inner@2"},   // the inner loop as seen after it: its exit record
		{"exit", "outer", "outer"},    // the outer loop as seen after it
		{"scatter#3", "init", "init"}, // a batch item's sources are outside the batch
	} {
		in, err := parseInstance(tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if got := in.at(n[tc.node]).key(); got != tc.want {
			t.Errorf("%s.at(%s) = %s, want %s", tc.key, tc.node, got, tc.want)
		}
	}
}
