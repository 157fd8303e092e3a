package redis

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/flowgen/flowgen/runtime/backend"
)

// Jobs and run records are stored in a compact binary form, not JSON: they are written
// and read on every node execution.
//
// A job body starts with what the Lua scripts read, "<priority>|<length of the run
// id>:<run id>" in decimal, then a format byte and the other fields as
// uvarint-prefixed strings and varints. A run record is a format byte followed by its fields the same
// way. The format byte lets a later version change the layout.
const (
	jobFormat    = 1
	recordFormat = 1
)

var errCorrupt = errors.New("corrupt data")

type writer []byte

func (w *writer) str(s string)  { *w = binary.AppendUvarint(*w, uint64(len(s))); *w = append(*w, s...) }
func (w *writer) uint(n uint64) { *w = binary.AppendUvarint(*w, n) }
func (w *writer) int(n int64)   { *w = binary.AppendVarint(*w, n) }

// nbytes encodes a byte slice that may be nil: 0 for nil, 1+len otherwise.
func (w *writer) nbytes(b []byte) {
	if b == nil {
		w.uint(0)
		return
	}
	w.uint(uint64(len(b)) + 1)
	*w = append(*w, b...)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) int() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) take(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errCorrupt
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) str() string { return string(r.take(r.uint())) }

func (r *reader) nbytes() []byte {
	n := r.uint()
	if n == 0 || r.err != nil {
		return nil
	}
	return slices.Clone(r.take(n - 1))
}

// encodeJob returns a job's body.
func encodeJob(j *backend.Job) []byte {
	w := writer(make([]byte, 0, 64+len(j.ID)+len(j.Run)+len(j.Workflow)+len(j.Node)+len(j.From)+len(j.Err)))
	w = strconv.AppendInt(w, int64(j.Priority), 10)
	w = append(w, '|')
	w = strconv.AppendInt(w, int64(len(j.Run)), 10)
	w = append(w, ':')
	w = append(w, j.Run...)
	w = append(w, jobFormat)
	w.str(j.ID)
	w.str(j.Workflow)
	w.str(j.Version)
	w.uint(uint64(j.Kind))
	w.str(j.Node)
	w.str(j.From)
	w.int(int64(j.Attempt))
	var nb int64
	if !j.NotBefore.IsZero() {
		nb = j.NotBefore.UnixNano()
	}
	w.int(nb)
	w.str(j.Err)
	return w
}

// decodeJob parses a job's body.
func decodeJob(body []byte) (backend.Job, error) {
	var j backend.Job
	bad := fmt.Errorf("job body: %w", errCorrupt)
	head, rest, ok := bytes.Cut(body, []byte{'|'})
	if !ok {
		return j, bad
	}
	pri, err := strconv.Atoi(string(head))
	if err != nil {
		return j, bad
	}
	head, rest, ok = bytes.Cut(rest, []byte{':'})
	if !ok {
		return j, bad
	}
	n, err := strconv.Atoi(string(head))
	if err != nil || n < 0 || len(rest) < n+1 || rest[n] != jobFormat {
		return j, bad
	}
	j.Priority = pri
	j.Run = string(rest[:n])
	r := reader{b: rest[n+1:]}
	j.ID = r.str()
	j.Workflow = r.str()
	j.Version = r.str()
	j.Kind = backend.JobKind(r.uint())
	j.Node = r.str()
	j.From = r.str()
	j.Attempt = int(r.int())
	if nb := r.int(); nb != 0 {
		j.NotBefore = time.Unix(0, nb)
	}
	j.Err = r.str()
	if r.err != nil {
		return backend.Job{}, fmt.Errorf("job body: %w", r.err)
	}
	return j, nil
}

// encodeRecord returns a run's record without its ID (the key holds it) and Updated
// (the "u" field holds it, rewritten by every transition).
func encodeRecord(r *backend.Run) []byte {
	w := writer(make([]byte, 0, 64+len(r.Input)+len(r.Result)+len(r.Reason)))
	w = append(w, recordFormat)
	w.str(r.Workflow)
	w.str(r.Version)
	w.str(string(r.Status))
	w.int(int64(r.Priority))
	w.nbytes(r.Input)
	w.nbytes(r.Result)
	w.str(r.FailedNode)
	w.str(r.Reason)
	w.str(r.Parent)
	w.str(r.ParentNode)
	keys := make([]string, 0, len(r.Metadata))
	for k := range r.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.uint(uint64(len(keys)))
	for _, k := range keys {
		w.str(k)
		w.str(r.Metadata[k])
	}
	w.int(r.Created.UnixNano())
	return w
}

// decodeRecord parses a run's record.
func decodeRecord(id string, data []byte) (*backend.Run, error) {
	if len(data) < 1 || data[0] != recordFormat {
		return nil, fmt.Errorf("run %s: record: %w", id, errCorrupt)
	}
	r := reader{b: data[1:]}
	run := &backend.Run{ID: id}
	run.Workflow = r.str()
	run.Version = r.str()
	run.Status = backend.Status(r.str())
	run.Priority = int(r.int())
	run.Input = r.nbytes()
	run.Result = r.nbytes()
	run.FailedNode = r.str()
	run.Reason = r.str()
	run.Parent = r.str()
	run.ParentNode = r.str()
	if n := r.uint(); n > 0 && r.err == nil {
		if n > uint64(len(r.b)) {
			return nil, fmt.Errorf("run %s: record: %w", id, errCorrupt)
		}
		run.Metadata = make(map[string]string, n)
		for range n {
			k := r.str()
			run.Metadata[k] = r.str()
		}
	}
	run.Created = time.Unix(0, r.int())
	if r.err != nil {
		return nil, fmt.Errorf("run %s: record: %w", id, r.err)
	}
	return run, nil
}
