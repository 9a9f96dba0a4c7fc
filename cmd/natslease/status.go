package main

import (
	"context"
	"errors"
	"flag"
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
when), or "free". Exits 0 either way; 1 only on errors. It never creates
a bucket.

Examples:
  natslease status nightly-report
  natslease status --kind election scheduler
  NATS_URL=nats://nats.internal:4222 natslease status --bucket jobs db.migrate
`

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "", "")
	kind := fs.String("kind", "lock", "what KEY is: lock (natslease lock, dlock) or election (natslease elect, leadelect)")
	bucket := fs.String("bucket", "", `KeyValue bucket (default "dlock" for locks, "leadelect" for elections)`)
	if ok, code := parseFlags(fs, statusUsage, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageError(stderr, "status", "want exactly one KEY, got %d arguments", fs.NArg())
	}
	key := fs.Arg(0)
	if *kind != "lock" && *kind != "election" {
		return usageError(stderr, "status", "--kind %q is neither lock nor election", *kind)
	}
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
	if *kind == "election" {
		return electionStatus(ctx, js, *bucket, key, stdout, stderr)
	}
	return lockStatus(ctx, js, *bucket, key, stdout, stderr)
}

func lockStatus(ctx context.Context, js jetstream.JetStream, bucket, key string, stdout, stderr io.Writer) int {
	where := bucket + "/" + key
	// Read only: no Client, no bucket created, read permissions suffice.
	h, err := dlock.ReadHolder(ctx, js, bucket, key)
	switch {
	case errors.Is(err, dlock.ErrNotLocked):
		fmt.Fprintf(stdout, "%s: free\n", where)
		return exitOK
	case err != nil:
		return fail(stderr, explain(err))
	}
	fmt.Fprintf(stdout, "%s: held\n", where)
	fmt.Fprintf(stdout, "  owner:     %s\n", h.Owner)
	fmt.Fprintf(stdout, "  host:      %s\n", orUnknown(h.Hostname))
	fmt.Fprintf(stdout, "  pid:       %d\n", h.PID)
	fmt.Fprintf(stdout, "  token:     %d\n", h.Token)
	fmt.Fprintf(stdout, "  revision:  %d\n", h.Revision)
	fmt.Fprintf(stdout, "  acquired:  %s (%v ago)\n", h.AcquiredAt.Format(time.RFC3339Nano), time.Since(h.AcquiredAt).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  time left: %v (lock TTL %v)\n", h.TimeLeft.Round(time.Millisecond), h.TTL)
	return exitOK
}

func electionStatus(ctx context.Context, js jetstream.JetStream, bucket, key string, stdout, stderr io.Writer) int {
	where := bucket + "/" + key
	obs, err := leadelect.NewObserver(js, leadelect.ObserverConfig{Bucket: bucket, Key: key})
	if err != nil {
		return fail(stderr, explain(err))
	}
	info, err := obs.Leader(ctx)
	switch {
	case errors.Is(err, leadelect.ErrNoLeader):
		fmt.Fprintf(stdout, "%s: free (no leader)\n", where)
		return exitOK
	case err != nil:
		return fail(stderr, explain(err))
	}
	fmt.Fprintf(stdout, "%s: led\n", where)
	fmt.Fprintf(stdout, "  leader:    %s\n", info.ID)
	fmt.Fprintf(stdout, "  nonce:     %s\n", info.Nonce)
	fmt.Fprintf(stdout, "  token:     %d\n", info.Token)
	fmt.Fprintf(stdout, "  revision:  %d\n", info.Revision)
	fmt.Fprintf(stdout, "  since:     %s (%v ago)\n", info.Since.Format(time.RFC3339Nano), time.Since(info.Since).Round(time.Millisecond))
	return exitOK
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}
