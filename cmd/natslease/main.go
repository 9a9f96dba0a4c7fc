// Command natslease runs commands under a distributed lock or a leader
// election on NATS JetStream KeyValue, shows who holds a key, and
// demonstrates a leader election's failover against an embedded server.
//
//	go run ./cmd/natslease demo
//	natslease lock --ttl 30s nightly-report -- ./make-report.sh
//	natslease elect scheduler -- ./scheduler
//	natslease status nightly-report
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/natskvlease/natskvlease"
)

// Exit statuses of natslease itself; otherwise it exits with the status
// of the command it ran.
const (
	exitOK       = 0
	exitError    = 1  // bad flags, unreachable server, no JetStream, ...
	exitTempFail = 75 // EX_TEMPFAIL: the lock is taken (--wait ran out)
	exitNoExec   = 127
)

const mainUsage = `natslease: locks and leader election on NATS JetStream KeyValue

Usage:
  natslease demo   [flags]                  a leader election with failover and handoff, on an embedded server
  natslease lock   [flags] KEY -- COMMAND... run COMMAND while holding the lock KEY
  natslease elect  [flags] KEY -- COMMAND... run COMMAND only while this process leads the election KEY
  natslease status [flags] KEY              who holds KEY, its fencing token and time left, or "free"

Run "natslease COMMAND --help" for each command's flags and examples.
Connection flags follow the nats CLI: --server (default $NATS_URL, else
nats://127.0.0.1:4222), --creds, --user, --password, --tlscert, --tlskey, --tlsca.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is natslease with its arguments (without the program name); it
// returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitError
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "lock":
		return runLock(ctx, rest, stdout, stderr)
	case "elect":
		return runElect(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			return run(ctx, []string{rest[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "natslease: unknown command %q (want demo, lock, elect or status; see natslease --help)\n", cmd)
	return exitError
}

// parseFlags parses args into fs. It returns false with the exit status
// when natslease should stop: after --help (status 0) or on a bad flag
// (status 1, one line on stderr).
func parseFlags(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) (bool, int) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		fmt.Fprintln(stdout, "\nFlags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return false, exitOK
	case err != nil:
		return false, usageError(stderr, fs.Name(), "%v", err)
	}
	return true, exitOK
}

func usageError(stderr io.Writer, cmd, format string, args ...any) int {
	fmt.Fprintf(stderr, "natslease %s: %s (see natslease %s --help)\n", cmd, fmt.Sprintf(format, args...), cmd)
	return exitError
}

// fail prints err as one line and returns exitError.
func fail(stderr io.Writer, err error) int {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	fmt.Fprintf(stderr, "natslease: %s\n", msg)
	return exitError
}

// splitCommand splits "KEY [--] COMMAND ARGS..." and checks the key.
func splitCommand(args []string) (key string, argv []string, err error) {
	if len(args) == 0 {
		return "", nil, errors.New("missing KEY")
	}
	key, rest := args[0], args[1:]
	if err := natskvlease.ValidateKey(key); err != nil {
		return "", nil, fmt.Errorf("bad KEY %q: %v", key, err)
	}
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return "", nil, errors.New("missing COMMAND after KEY --")
	}
	return key, rest, nil
}

// optDuration is a duration flag that knows whether it was given.
type optDuration struct {
	d   time.Duration
	set bool
}

func (o *optDuration) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.d.String()
}

func (o *optDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("negative duration %v", d)
	}
	o.d, o.set = d, true
	return nil
}
