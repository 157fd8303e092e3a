// Package nodes holds the node functions of the content-moderation example: three
// checks run in parallel on a post, a triage joins them and routes the post to one of
// four branches, and every branch ends in the same audit record.
package nodes

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/flowgen/flowgen/runtime"
)

// Test hooks, off unless LedgerEnv is set: it names a file to which every node
// execution appends a line "<run> <node> <attempt> <pid> <unix time in ns>"; DelayEnv
// then sets a duration (e.g. "20ms") every node takes after that, standing for real work. The crash test of
// backends/backendtest sets both, to count node executions across worker processes that
// it kills while nodes are in flight.
const (
	LedgerEnv = "FLOWGEN_MODERATION_LEDGER"
	DelayEnv  = "FLOWGEN_MODERATION_DELAY"
)

// ledger runs the test hooks for the node execution of ctx.
func ledger(ctx context.Context) error {
	path, t := os.Getenv(LedgerEnv), runtime.TaskFrom(ctx)
	if path == "" || t == nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	// One write per line: appends of a short line do not interleave.
	_, err = fmt.Fprintf(f, "%s %s %d %d %d\n", t.Run, t.Node, t.Attempt, os.Getpid(), time.Now().UnixNano())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if d, _ := time.ParseDuration(os.Getenv(DelayEnv)); err == nil && d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	return err
}

// Post is the run input.
type Post struct {
	ID     string   `json:"id"`
	Author string   `json:"author"`
	Text   string   `json:"text"`
	Images []string `json:"images"`
	Links  []string `json:"links"`
}

// Finding is one check's verdict.
type Finding struct {
	Check    string  `json:"check"`
	Severity int     `json:"severity"` // 0 clean … 3 severe
	Note     string  `json:"note,omitempty"`
	Post     Post    `json:"post"`
	Score    float64 `json:"score"`
}

// WordsParams lists the words the text check looks for, by severity.
type WordsParams struct {
	Severe []string `json:"severe"`
	Mild   []string `json:"mild"`
}

// CheckText looks for listed words in the text.
//
//flowgen:node checkText
func CheckText(ctx context.Context, in Post, p WordsParams) (Finding, error) {
	if err := ledger(ctx); err != nil {
		return Finding{}, err
	}
	f := Finding{Check: "text", Post: in}
	text := strings.ToLower(in.Text)
	for _, w := range p.Severe {
		if strings.Contains(text, w) {
			return Finding{Check: "text", Severity: 3, Note: "severe word " + w, Post: in, Score: 1}, nil
		}
	}
	for _, w := range p.Mild {
		if strings.Contains(text, w) {
			f.Severity, f.Note, f.Score = 1, "mild word "+w, 0.4
		}
	}
	return f, nil
}

// CheckImages flags images whose name says they are not safe.
//
//flowgen:node checkImages
func CheckImages(ctx context.Context, in Post) (Finding, error) {
	if err := ledger(ctx); err != nil {
		return Finding{}, err
	}
	f := Finding{Check: "images", Post: in}
	for _, img := range in.Images {
		if strings.Contains(img, "nsfw") {
			f.Severity, f.Note, f.Score = 2, "unsafe image "+img, 0.8
		}
	}
	return f, nil
}

// CheckLinks flags links to unknown domains.
//
//flowgen:node checkLinks
func CheckLinks(ctx context.Context, in Post) (Finding, error) {
	if err := ledger(ctx); err != nil {
		return Finding{}, err
	}
	f := Finding{Check: "links", Post: in}
	for _, l := range in.Links {
		if strings.Contains(l, "spam") {
			f.Severity, f.Note, f.Score = 2, "spam link "+l, 0.7
		}
	}
	return f, nil
}

// Findings joins the three checks.
type Findings struct {
	Text   Finding `flowgen:"text"`
	Images Finding `flowgen:"images"`
	Links  Finding `flowgen:"links"`
}

// Case is a post with the worst finding against it.
type Case struct {
	Post  Post    `json:"post"`
	Worst Finding `json:"worst"`
}

// Triage routes a post by its worst finding: approve, redact, escalate or ban.
//
//flowgen:node triage actions=approve,redact,escalate,ban
func Triage(ctx context.Context, in Findings) (runtime.Routed[Case], error) {
	if err := ledger(ctx); err != nil {
		return runtime.Routed[Case]{}, err
	}
	worst := in.Text
	for _, f := range []Finding{in.Images, in.Links} {
		if f.Severity > worst.Severity {
			worst = f
		}
	}
	c := Case{Post: in.Text.Post, Worst: worst}
	switch {
	case worst.Severity >= 3:
		return runtime.Route("ban", c), nil
	case worst.Check == "images" && worst.Severity == 2:
		return runtime.Route("escalate", c), nil
	case worst.Severity > 0:
		return runtime.Route("redact", c), nil
	}
	return runtime.Route("approve", c), nil
}

// Verdict is how a post was handled.
type Verdict struct {
	PostID string `json:"postId"`
	Action string `json:"action"`
	Note   string `json:"note,omitempty"`
}

// Publish makes the post visible.
//
//flowgen:node publish
func Publish(ctx context.Context, in Case) (Verdict, error) {
	if err := ledger(ctx); err != nil {
		return Verdict{}, err
	}
	return Verdict{PostID: in.Post.ID, Action: "published"}, nil
}

// Redact publishes the post with the offending part hidden.
//
//flowgen:node redact
func Redact(ctx context.Context, in Case) (Verdict, error) {
	if err := ledger(ctx); err != nil {
		return Verdict{}, err
	}
	return Verdict{PostID: in.Post.ID, Action: "redacted", Note: in.Worst.Note}, nil
}

// Escalate hands the post to a moderator.
//
//flowgen:node escalate
func Escalate(ctx context.Context, in Case) (Verdict, error) {
	if err := ledger(ctx); err != nil {
		return Verdict{}, err
	}
	return Verdict{PostID: in.Post.ID, Action: "escalated", Note: in.Worst.Note}, nil
}

// BanAuthor removes the post and bans its author.
//
//flowgen:node banAuthor
func BanAuthor(ctx context.Context, in Case) (Verdict, error) {
	if err := ledger(ctx); err != nil {
		return Verdict{}, err
	}
	return Verdict{PostID: in.Post.ID, Action: "banned " + in.Post.Author, Note: in.Worst.Note}, nil
}

// AuditRecord is the moderation log entry.
type AuditRecord struct {
	PostID string `json:"postId"`
	Entry  string `json:"entry"`
}

// Audit writes the moderation log entry, whichever branch ran first.
//
//flowgen:node audit
func Audit(ctx context.Context, in Verdict) (AuditRecord, error) {
	if err := ledger(ctx); err != nil {
		return AuditRecord{}, err
	}
	entry := in.PostID + ": " + in.Action
	if in.Note != "" {
		entry += " (" + in.Note + ")"
	}
	return AuditRecord{PostID: in.PostID, Entry: entry}, nil
}
