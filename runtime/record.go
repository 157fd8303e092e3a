package runtime

import (
	"encoding/binary"
	"errors"
)

// record is a node instance's completion: its output and its routing decision, written
// once. A skipped instance (its branch not taken) has a record with Skipped set.
type record struct {
	Output  []byte // JSON output
	Action  string
	Taken   []int // indexes of the edges taken
	Skipped bool
	Items   int // batch scatter: number of items
}

// A record is stored as: a version byte (1), a flags byte (1: skipped), the action's
// length and bytes, the number of taken edges and their indexes, the number of batch
// items, all as uvarints, then the output's bytes to the end. Records are read on
// every node execution, so they are not JSON.
const recordVersion = 1

var errCorruptRecord = errors.New("corrupt completion record")

func (r *record) encode() []byte {
	b := make([]byte, 0, 8+len(r.Action)+2*len(r.Taken)+len(r.Output))
	flags := byte(0)
	if r.Skipped {
		flags = 1
	}
	b = append(b, recordVersion, flags)
	b = binary.AppendUvarint(b, uint64(len(r.Action)))
	b = append(b, r.Action...)
	b = binary.AppendUvarint(b, uint64(len(r.Taken)))
	for _, t := range r.Taken {
		b = binary.AppendUvarint(b, uint64(t))
	}
	b = binary.AppendUvarint(b, uint64(r.Items))
	return append(b, r.Output...)
}

func decodeRecord(data []byte) (*record, error) {
	if len(data) < 2 || data[0] != recordVersion {
		return nil, errCorruptRecord
	}
	r := &record{Skipped: data[1]&1 != 0}
	rest := data[2:]
	next := func() (int, bool) {
		v, n := binary.Uvarint(rest)
		if n <= 0 || v > uint64(len(data))+1<<20 {
			return 0, false
		}
		rest = rest[n:]
		return int(v), true
	}
	n, ok := next()
	if !ok || n > len(rest) {
		return nil, errCorruptRecord
	}
	r.Action, rest = string(rest[:n]), rest[n:]
	if n, ok = next(); !ok || n > len(rest) {
		return nil, errCorruptRecord
	}
	if n > 0 {
		r.Taken = make([]int, n)
		for i := range r.Taken {
			if r.Taken[i], ok = next(); !ok {
				return nil, errCorruptRecord
			}
		}
	}
	if r.Items, ok = next(); !ok {
		return nil, errCorruptRecord
	}
	if len(rest) > 0 {
		r.Output = rest
	}
	return r, nil
}
