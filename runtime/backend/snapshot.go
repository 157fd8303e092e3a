package backend

import "strconv"

// Snapshot is a Tx over a copy of one run's state that a backend loaded at the start of
// a transition. It records the changes, which the backend then applies atomically (in
// its SQL transaction, or a script that first checks that nothing changed since the
// load). Backends whose store cannot run the completion algorithm statement by
// statement cheaply use it to turn a transition into one load and one write.
type Snapshot struct {
	run    *Run
	kv     map[string][]byte
	writes map[string][]byte // nil value: deleted
	order  []string          // keys of writes, in the order first written
	jobs   []Job
}

// NewSnapshot returns a transaction over run and its loaded key-value state. The
// snapshot owns both from then on.
func NewSnapshot(run *Run, kv map[string][]byte) *Snapshot {
	if kv == nil {
		kv = map[string][]byte{}
	}
	return &Snapshot{run: run, kv: kv, writes: map[string][]byte{}}
}

// Run is the run's record; changes to it are part of the transition.
func (s *Snapshot) Run() *Run { return s.run }

func (s *Snapshot) get(k string) []byte {
	if v, ok := s.writes[k]; ok {
		return v
	}
	return s.kv[k]
}

func (s *Snapshot) set(k string, v []byte) {
	if _, seen := s.writes[k]; !seen {
		s.order = append(s.order, k)
	}
	s.writes[k] = v
}

// Get returns the values of keys; absent keys are nil.
func (s *Snapshot) Get(keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = s.get(k)
	}
	return out, nil
}

// PutIfAbsent stores key=val unless key exists.
func (s *Snapshot) PutIfAbsent(key string, val []byte) (bool, error) {
	if s.get(key) != nil {
		return false, nil
	}
	s.set(key, nonNil(val))
	return true, nil
}

// Put stores key=val.
func (s *Snapshot) Put(key string, val []byte) error {
	s.set(key, nonNil(val))
	return nil
}

// Delete removes keys.
func (s *Snapshot) Delete(keys ...string) error {
	for _, k := range keys {
		s.set(k, nil)
	}
	return nil
}

// Incr adds delta to the integer at key.
func (s *Snapshot) Incr(key string, delta int64) (int64, error) {
	var n int64
	if v := s.get(key); v != nil {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, err
		}
	}
	if delta != 0 {
		n += delta
		s.set(key, strconv.AppendInt(nil, n, 10))
	}
	return n, nil
}

// Enqueue adds jobs to the transition.
func (s *Snapshot) Enqueue(jobs ...Job) { s.jobs = append(s.jobs, jobs...) }

// Change is one key's new value; Value is nil when the key was deleted.
type Change struct {
	Key   string
	Value []byte
}

// Changes returns the changed keys in the order they were first written, and the jobs
// to enqueue.
func (s *Snapshot) Changes() ([]Change, []Job) {
	cs := make([]Change, len(s.order))
	for i, k := range s.order {
		cs[i] = Change{Key: k, Value: s.writes[k]}
	}
	return cs, s.jobs
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
