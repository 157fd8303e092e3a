// Package examples holds flowgen's example apps, each a set of blueprints and annotated
// node functions: order (a chain, a fan-out into three checks, a typed join, an action
// router, a conditional edge with a transform, retries with a fallback, params and an
// any-join), moderation (three parallel checks, a 3-way join, a 4-way router converging
// on an any-join), gallery (a batch scatter/gather and a loop) and bench (the benchmark
// shapes). Their generated packages and worker binaries are under generated/;
// backends/backendtest runs the workflows end to end on every backend, and the test
// here builds and stops a generated worker binary.
package examples
