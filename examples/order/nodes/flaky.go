package nodes

import "sync"

// flaky makes the demo payment provider fail the first two attempts per order, so the
// retries in the blueprint can be seen working. It is per process: a demo, not a pattern.
var flaky = &failures{seen: map[string]int{}}

type failures struct {
	mu   sync.Mutex
	seen map[string]int
}

// fail reports whether this attempt for key fails: the first two do.
func (f *failures) fail(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[key]++
	return f.seen[key] <= 2
}
