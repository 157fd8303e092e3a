//go:build !race

package backendtest

// timeScale stretches the suite's leases under the race detector (see race_on.go).
const timeScale = 1
