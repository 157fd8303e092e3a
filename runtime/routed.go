package runtime

// Routed is the output of a node that chooses a branch: successors receive Value, and
// Action selects the edges to take (edges whose action equals it; when none match, the
// edges without an action). Declare the possible actions on the directive:
//
//	//flowgen:node triage actions=ban,approve
type Routed[T any] struct {
	Value  T
	Action string
}

// Route returns a Routed value; a shorthand for node functions.
func Route[T any](action string, v T) Routed[T] {
	return Routed[T]{Value: v, Action: action}
}
