package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/leadelect"
)

const statusUsage = `Usage: natslease status [flags] KEY

Prints who holds the lock KEY (--kind lock, the default: owner, host, pid,
fencing token, revision, time left before it expires unless renewed) or
who leads the election KEY (--kind election: leader ID, token, since
when), or "free". It never creates a bucket.

With --json it prints one JSON object instead:
  {"key":"k","bucket":"dlock","kind":"lock","held":true,"owner":"…",
   "hostname":"…","pid":42,"token":7,"revision":9,
   "acquired_at":"2026-01-02T15:04:05Z","time_left":1.5,"ttl":30}
for an election "leader", "nonce" and "since" take the place of owner,
hostname, pid, acquired_at, time_left and ttl. Durations are in seconds.
A free key gives {"key":…,"bucket":…,"kind":…,"held":false}.

Exit status: 0 when KEY is held, 3 when it is free, 2 for usage errors,
1 for other errors (the server cannot be reached, ...).

Examples:
  natslease status nightly-report
  natslease status --kind election scheduler
  natslease status --json nightly-report | jq .token
  if natslease status db.migrate >/dev/null; then echo "a migration runs"; fi
  NATS_URL=nats://nats.internal:4222 natslease status --bucket jobs db.migrate
`

// statusReport is status's answer; its JSON form is --json's output.
type statusReport struct {
	Key    string `json:"key"`
	Bucket string `json:"bucket"`
	Kind   string `json:"kind"`
	Held   bool   `json:"held"`

	Owner      string   `json:"owner,omitempty"`
	Hostname   string   `json:"hostname,omitempty"`
	PID        int      `json:"pid,omitempty"`
	Leader     string   `json:"leader,omitempty"`
	Nonce      string   `json:"nonce,omitempty"`
	Token      uint64   `json:"token,omitempty"`
	Revision   uint64   `json:"revision,omitempty"`
	AcquiredAt string   `json:"acquired_at,omitempty"`
	Since      string   `json:"since,omitempty"`
	TimeLeft   *float64 `json:"time_left,omitempty"`
	TTL        *float64 `json:"ttl,omitempty"`

	note string // text output only: why it is free
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newCommand("status", statusUsage)
	var cf connFlags
	cf.register(c.fs, "", "")
	kind := c.fs.String("kind", "lock", "what KEY is: lock (natslease lock, dlock) or election (natslease elect, leadelect)")
	bucket := c.fs.String("bucket", "", "KeyValue `bucket` (default \"dlock\" for locks, \"leadelect\" for elections)")
	jsonOut := c.fs.Bool("json", false, "print one JSON object")
	p, ok, code := c.parseOrExit(args, stdout, stderr)
	if !ok {
		return code
	}
	positional := append(p.args, p.command...) // "--" only ends the flags here
	var err error
	switch {
	case len(positional) != 1:
		err = fmt.Errorf("want exactly one KEY, got %d arguments", len(positional))
	case *kind != "lock" && *kind != "election":
		err = fmt.Errorf("--kind %q is neither lock nor election", *kind)
	default:
		err = checkKey(positional[0])
	}
	if err == nil && *bucket != "" {
		err = checkBucket(*bucket)
	}
	if err != nil {
		return usageError(stderr, "status", "%v", err)
	}
	key := positional[0]
	if *bucket == "" {
		*bucket = dlock.DefaultBucket
		if *kind == "election" {
			*bucket = leadelect.DefaultBucket
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, js, err := cf.connect(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	defer nc.Close()
	r := statusReport{Key: key, Bucket: *bucket, Kind: *kind}
	if *kind == "election" {
		err = electionStatus(ctx, js, &r)
	} else {
		err = lockStatus(ctx, js, &r)
	}
	if err != nil {
		return fail(stderr, err)
	}
	if *jsonOut {
		b, _ := json.Marshal(r) // plain fields: cannot fail
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		printStatus(stdout, r)
	}
	if !r.Held {
		return exitFree
	}
	return exitOK
}

func lockStatus(ctx context.Context, js jetstream.JetStream, r *statusReport) error {
	// Read only: no Client, no bucket created, read permissions suffice.
	h, err := dlock.ReadHolder(ctx, js, r.Bucket, r.Key)
	switch {
	case errors.Is(err, dlock.ErrNotLocked):
		return nil
	case err != nil:
		return err
	}
	left, ttl := h.TimeLeft.Seconds(), h.TTL.Seconds()
	r.Held = true
	r.Owner, r.Hostname, r.PID = h.Owner, h.Hostname, h.PID
	r.Token, r.Revision = h.Token, h.Revision
	r.AcquiredAt = h.AcquiredAt.UTC().Format(time.RFC3339Nano)
	r.TimeLeft, r.TTL = &left, &ttl
	return nil
}

func electionStatus(ctx context.Context, js jetstream.JetStream, r *statusReport) error {
	obs, err := leadelect.NewObserver(js, leadelect.ObserverConfig{Bucket: r.Bucket, Key: r.Key})
	if err != nil {
		return explain(err)
	}
	info, err := obs.Leader(ctx)
	switch {
	case errors.Is(err, leadelect.ErrNoLeader):
		r.note = "no leader"
		return nil
	case err != nil:
		return explain(err)
	}
	r.Held = true
	r.Leader, r.Nonce = info.ID, info.Nonce
	r.Token, r.Revision = info.Token, info.Revision
	r.Since = info.Since.UTC().Format(time.RFC3339Nano)
	return nil
}

// printStatus is the text form: "bucket/key: held" and one field a line,
// or "bucket/key: free (why)".
func printStatus(w io.Writer, r statusReport) {
	where := r.Bucket + "/" + r.Key
	if !r.Held {
		if r.note != "" {
			fmt.Fprintf(w, "%s: free (%s)\n", where, r.note)
		} else {
			fmt.Fprintf(w, "%s: free\n", where)
		}
		return
	}
	fmt.Fprintf(w, "%s: held\n", where)
	if r.Kind == "election" {
		since, _ := time.Parse(time.RFC3339Nano, r.Since)
		fmt.Fprintf(w, "  leader:    %s\n", r.Leader)
		fmt.Fprintf(w, "  nonce:     %s\n", r.Nonce)
		fmt.Fprintf(w, "  token:     %d\n", r.Token)
		fmt.Fprintf(w, "  revision:  %d\n", r.Revision)
		fmt.Fprintf(w, "  since:     %s (%v ago)\n", r.Since, time.Since(since).Round(time.Millisecond))
		return
	}
	acquired, _ := time.Parse(time.RFC3339Nano, r.AcquiredAt)
	fmt.Fprintf(w, "  owner:     %s\n", r.Owner)
	fmt.Fprintf(w, "  host:      %s\n", orUnknown(r.Hostname))
	fmt.Fprintf(w, "  pid:       %d\n", r.PID)
	fmt.Fprintf(w, "  token:     %d\n", r.Token)
	fmt.Fprintf(w, "  revision:  %d\n", r.Revision)
	fmt.Fprintf(w, "  acquired:  %s (%v ago)\n", r.AcquiredAt, time.Since(acquired).Round(time.Millisecond))
	fmt.Fprintf(w, "  time left: %v (lock TTL %v)\n", seconds(*r.TimeLeft).Round(time.Millisecond), seconds(*r.TTL))
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}
