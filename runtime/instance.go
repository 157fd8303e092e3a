package runtime

import (
	"fmt"
	"strconv"
	"strings"
)

// instance is one execution of a node: the node, the iterations of the loops around it
// (outermost first) and, for a batch item, its index. Its key is unique within a run:
// "node", "node@2", "node@1.0", "scatter#3".
type instance struct {
	node  string
	scope []int
	item  int // -1 when not a batch item
}

func nodeInstance(node string) instance { return instance{node: node, item: -1} }

func (in instance) key() string {
	if len(in.scope) == 0 && in.item < 0 {
		return in.node
	}
	var b strings.Builder
	b.WriteString(in.node)
	for i, s := range in.scope {
		if i == 0 {
			b.WriteByte('@')
		} else {
			b.WriteByte('.')
		}
		b.WriteString(strconv.Itoa(s))
	}
	if in.item >= 0 {
		b.WriteByte('#')
		b.WriteString(strconv.Itoa(in.item))
	}
	return b.String()
}

// iteration is the iteration of the innermost loop, 0 outside loops.
func (in instance) iteration() int {
	if len(in.scope) == 0 {
		return 0
	}
	return in.scope[len(in.scope)-1]
}

func parseInstance(key string) (instance, error) {
	in := instance{item: -1}
	rest := key
	if i := strings.LastIndexByte(rest, '#'); i >= 0 {
		n, err := strconv.Atoi(rest[i+1:])
		if err != nil || n < 0 {
			return in, fmt.Errorf("bad node instance %q", key)
		}
		in.item, rest = n, rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		for _, p := range strings.Split(rest[i+1:], ".") {
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 {
				return in, fmt.Errorf("bad node instance %q", key)
			}
			in.scope = append(in.scope, n)
		}
		rest = rest[:i]
	}
	if rest == "" {
		return in, fmt.Errorf("bad node instance %q", key)
	}
	in.node = rest
	return in, nil
}

// at is node's instance as seen from in: the scope truncated to node's loop depth.
func (in instance) at(node *Node) instance {
	d := node.Depth
	if d > len(in.scope) {
		d = len(in.scope)
	}
	return instance{node: node.ID, scope: in.scope[:d:d], item: -1}
}

// successor is the instance of target reached by an edge from in (whose node is from).
// An edge back to the enclosing loop's controller starts the next iteration; an edge
// into a loop's controller from outside starts iteration 0; any other edge keeps the
// iterations of the loops both nodes are in.
func (in instance) successor(from, target *Node) instance {
	out := instance{node: target.ID, item: -1}
	switch {
	case backEdge(from, target):
		out.scope = append([]int(nil), in.scope...)
		out.scope[len(out.scope)-1]++
	case target.Depth > len(in.scope):
		out.scope = append(append([]int(nil), in.scope...), 0)
	default:
		out.scope = append([]int(nil), in.scope[:target.Depth]...)
	}
	return out
}

// backEdge reports whether an edge from -> target goes back to the controller of from's
// loop, starting the next iteration.
func backEdge(from, target *Node) bool {
	return target.Kind == KindLoop && target.ID == from.Loop && from.ID != target.ID
}

// leavesLoop reports whether an edge from -> target leaves a loop around from.
func leavesLoop(from, target *Node) bool { return target.Depth < from.Depth }

// Keys of a run's state.
func completionKey(inst string) string    { return "n|" + inst }
func claimKey(inst string) string         { return "c|" + inst }
func arrivalKey(inst, pred string) string { return "a|" + inst + "|" + pred }

// arrivedKey and takenKey count the marks in inst's arrival set, and those marked taken.
func arrivedKey(inst string) string      { return "ac|" + inst }
func takenKey(inst string) string        { return "at|" + inst }
func waitingKey(node string) string      { return "w|" + node }
func resumeKey(inst string) string       { return "r|" + inst }
func batchSizeKey(scatter string) string { return "b|" + scatter }
func batchDoneKey(scatter string) string { return "bd|" + scatter }
func wakeKey(inst string) string         { return "z|" + inst }
func childGenKey(inst string) string     { return "g|" + inst }

// openKey counts the node instances claimed and not yet completed.
const openKey = "open"

// childrenKey lists the child runs started by the run's subflow nodes, one id a line.
const childrenKey = "children"
