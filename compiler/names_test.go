package compiler

import (
	"go/token"
	"testing"
)

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"250", 250},
		{"0", 0},
		{"500ms", 500},
		{"10s", 10_000},
		{"1.5s", 1_500},
		{"5m", 300_000},
		{"1h", 3_600_000},
		{"1h30m", 5_400_000},
		{"2d", 172_800_000},
		{"1d2h3m4s5ms", 93_784_005},
	} {
		got, err := parseDuration(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseDuration(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-5s", "5", "s", "5x", "5 s", "1.5ms", "1..5s", "10w", "99999999999999999d"} {
		if in == "5" {
			continue // a bare number is milliseconds
		}
		if got, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) = %d, want an error", in, got)
		}
	}
}

func TestGoName(t *testing.T) {
	for _, tc := range []struct {
		id, want string
		ok       bool
	}{
		{"order-fulfillment", "OrderFulfillment", true},
		{"order_fulfillment.v2", "OrderFulfillmentV2", true},
		{"my flow", "MyFlow", true},
		{"already", "Already", true},
		{"éclair", "Éclair", true},
		{"9lives", "9lives", false},
		{"a+b", "A+b", false},
		{"--", "", false},
	} {
		got, ok := goName(tc.id)
		if got != tc.want || ok != tc.ok {
			t.Errorf("goName(%q) = %q, %v; want %q, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParsePos(t *testing.T) {
	for in, want := range map[string]token.Position{
		"a/b.go:3:4": {Filename: "a/b.go", Line: 3, Column: 4},
		"a/b.go:3":   {Filename: "a/b.go", Line: 3},
		"a/b.go":     {Filename: "a/b.go"},
		"-":          {},
		"":           {},
	} {
		if got := parsePos(in); got != want {
			t.Errorf("parsePos(%q) = %+v, want %+v", in, got, want)
		}
	}
}
