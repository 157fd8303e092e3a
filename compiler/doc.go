// Package compiler turns blueprints and their annotated node functions into the
// intermediate form (Program) that the templates emit Go code from. Load reads the
// blueprint files, loads the node packages, checks every rule of the blueprint format
// and of the typed data flow, and reports all mistakes at once, each with its position
// (blueprint file:line:col of the offending JSON value, or Go file:line:col). It writes
// nothing.
//
// The work is split by stage, as in google/wire:
//
//   - json.go, decode.go: blueprint JSON with the position of every value;
//   - load.go: the //flowgen:node functions of the node packages (go/packages);
//   - analyze.go, nodes.go, graph.go, builtin.go: each blueprint's nodes, edges, loops,
//     cycles, reachability and built-in nodes;
//   - flow.go, join.go, checks.go: the typed data flow, joins, inputs, actions,
//     conditions, fallbacks and params;
//   - expr.go: Go expressions (conditions, transforms, loop conditions);
//   - literal.go: params JSON as typed Go literals;
//   - errors.go: the mistakes collector.
//
// Choices where the blueprint format is silent:
//
//   - sleep, wait and loop-controller nodes pass on what arrives; as start nodes they pass
//     on the run input, whose type is set by the other start nodes.
//   - Expressions see only out, input (and iteration in loop conditions) besides Go's
//     predeclared identifiers; see exprScope.
//   - Params follow encoding/json's rules; see literal.go. A function without a params
//     argument ignores its node's params, as Flowcraft blueprints carry free params.
//   - An edge's action is allowed from a routed function (declared actions), from a
//     loop controller (continue, break) and from a wait node (any action, given when the
//     run is resumed).
//   - A fallback must be a function node; fallbacks must not form a cycle.
//   - A node on a cycle, or unreachable, is reported once; its inputs are not checked.
package compiler
