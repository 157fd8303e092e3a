package runtime

// Ptr returns a pointer to v. Generated params literals use it for pointer fields.
func Ptr[T any](v T) *T { return &v }
