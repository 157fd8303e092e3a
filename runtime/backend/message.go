package backend

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// message is a job as the text of a queue message: ids only, never outputs.
type message struct {
	ID        string `json:"id"`
	Run       string `json:"run"`
	Workflow  string `json:"wf,omitempty"`
	Version   string `json:"ver,omitempty"`
	Kind      uint8  `json:"kind,omitempty"`
	Node      string `json:"node,omitempty"`
	From      string `json:"from,omitempty"`
	Attempt   int    `json:"att,omitempty"`
	Priority  int    `json:"pri,omitempty"`
	NotBefore int64  `json:"nb,omitempty"` // Unix nanoseconds
	Err       string `json:"err,omitempty"`
	Prior     int    `json:"prior,omitempty"`
}

// EncodeMessage encodes a job as a JSON queue message, for backends whose queues carry
// text (SQS, Azure Storage Queues). prior counts the deliveries of earlier copies of
// the job — a copy is sent when a delivered job is handed back unseen or re-delayed —
// which the queue's own delivery count does not include.
func EncodeMessage(j Job, prior int) string {
	m := message{Prior: prior, ID: j.ID, Run: j.Run, Workflow: j.Workflow, Version: j.Version, Kind: uint8(j.Kind),
		Node: j.Node, From: j.From, Attempt: j.Attempt, Priority: j.Priority, Err: j.Err}
	if !j.NotBefore.IsZero() {
		m.NotBefore = j.NotBefore.UnixNano()
	}
	data, _ := json.Marshal(m) // strings and numbers only: cannot fail
	return string(data)
}

// DecodeMessage decodes a message EncodeMessage wrote into the job and its prior count.
func DecodeMessage(data []byte) (Job, int, error) {
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		return Job{}, 0, fmt.Errorf("message is not a flowgen job: %w", err)
	}
	if m.ID == "" || m.Run == "" {
		return Job{}, 0, errors.New("message is not a flowgen job: no id or run")
	}
	j := Job{ID: m.ID, Run: m.Run, Workflow: m.Workflow, Version: m.Version, Kind: JobKind(m.Kind),
		Node: m.Node, From: m.From, Attempt: m.Attempt, Priority: m.Priority, Err: m.Err}
	if m.NotBefore != 0 {
		j.NotBefore = time.Unix(0, m.NotBefore)
	}
	return j, m.Prior, nil
}
