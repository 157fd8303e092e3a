//go:build race

package backendtest

// timeScale stretches the suite's leases under the race detector, which slows the
// backends' code (pure-Go SQLite most) several times: a lease must outlast one node's
// handling, or a healthy worker looks dead.
const timeScale = 3
