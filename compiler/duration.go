package compiler

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// durationUnits are the units of a sleep duration, in milliseconds.
var durationUnits = map[string]float64{
	"ms": 1,
	"s":  1000,
	"m":  60 * 1000,
	"h":  60 * 60 * 1000,
	"d":  24 * 60 * 60 * 1000,
}

// parseDuration parses a sleep duration string into milliseconds: a sequence of decimal
// numbers each followed by a unit among ms, s, m, h and d ("10s", "5m", "1h30m", "2d",
// "1.5s"), or a bare number of milliseconds ("250"). The result must be a whole,
// non-negative number of milliseconds.
func parseDuration(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	var total float64
	for rest := s; rest != ""; {
		i := strings.IndexFunc(rest, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if i <= 0 {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 500ms, 10s, 5m, 1h, 2d)", s)
		}
		n, err := strconv.ParseFloat(rest[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: bad number %q", s, rest[:i])
		}
		rest = rest[i:]
		j := strings.IndexFunc(rest, func(r rune) bool { return r >= '0' && r <= '9' || r == '.' })
		if j < 0 {
			j = len(rest)
		}
		unit, ok := durationUnits[rest[:j]]
		if !ok {
			return 0, fmt.Errorf("invalid duration %q: unknown unit %q (want ms, s, m, h or d)", s, rest[:j])
		}
		total += n * unit
		rest = rest[j:]
	}
	switch {
	case total > math.MaxInt64/2:
		return 0, fmt.Errorf("invalid duration %q: too long", s)
	case total != math.Trunc(total):
		return 0, fmt.Errorf("invalid duration %q: not a whole number of milliseconds", s)
	}
	return int64(total), nil
}
