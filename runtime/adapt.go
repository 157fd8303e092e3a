package runtime

// Cond adapts a typed edge condition, as flowgen compiles it from a blueprint, to the
// runtime: out is the source node's output and input the run input.
func Cond[O, I any](f func(out O, input I) bool) func(t *Task, out []byte) (bool, error) {
	return func(t *Task, data []byte) (bool, error) {
		var out O
		var input I
		if err := Decode(data, &out); err != nil {
			return false, err
		}
		if err := Decode(t.RunInput(), &input); err != nil {
			return false, err
		}
		return f(out, input), nil
	}
}

// LoopCond adapts a typed loop-controller condition: out is the value arriving at the
// controller, input the run input and iteration the 0-based iteration.
func LoopCond[O, I any](f func(out O, input I, iteration int) bool) func(t *Task, out []byte, iteration int) (bool, error) {
	return func(t *Task, data []byte, iteration int) (bool, error) {
		var out O
		var input I
		if err := Decode(data, &out); err != nil {
			return false, err
		}
		if err := Decode(t.RunInput(), &input); err != nil {
			return false, err
		}
		return f(out, input, iteration), nil
	}
}
