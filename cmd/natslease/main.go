// Command natslease runs commands under a distributed lock or a leader
// election on NATS JetStream KeyValue, shows who holds a key, and
// demonstrates a leader election's failover against an embedded server.
//
//	go run ./cmd/natslease demo
//	natslease lock --ttl 30s nightly-report -- ./make-report.sh
//	natslease elect scheduler -- ./scheduler
//	natslease status nightly-report
//
// natslease runs on Unix systems. The command it runs never outlives
// it: see guard.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/natskvlease/natskvlease"
)

// Exit statuses of natslease itself; lock and elect otherwise exit with
// the status of the command they ran.
const (
	exitOK       = 0
	exitError    = 1  // unreachable server, no JetStream, a failed release, ...
	exitUsage    = 2  // bad flags or arguments
	exitFree     = 3  // status: KEY is free (like systemctl is-active's 3)
	exitTempFail = 75 // EX_TEMPFAIL: the lock is taken (--wait ran out)
	exitNoExec   = 127
)

const mainUsage = `natslease: locks and leader election on NATS JetStream KeyValue

Usage:
  natslease demo   [flags]                  a leader election with failover and handoff, on an embedded server
  natslease lock   [flags] KEY -- COMMAND... run COMMAND while holding the lock KEY
  natslease elect  [flags] KEY -- COMMAND... run COMMAND only while this process leads the election KEY
  natslease status [flags] KEY              who holds KEY, its fencing token and time left, or "free"
  natslease --version                       the version natslease was built from

Run "natslease COMMAND --help" for each command's flags and examples.
Connection flags follow the nats CLI: --server (default $NATS_URL, else
nats://127.0.0.1:4222), --creds, --user, --password, --tlscert, --tlskey, --tlsca.
Flags may come before or after KEY; COMMAND comes after "--".

Exit status: 0 on success (status: KEY is held), 3 when status finds KEY
free, 2 for usage errors, 1 for other errors; lock and elect exit with
COMMAND's status (see their --help).
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == guardCommand {
		os.Exit(runGuard(os.Args[2:], os.Stderr))
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is natslease with its arguments (without the program name); it
// returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitUsage
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
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return exitOK
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			return run(ctx, []string{rest[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "natslease: unknown command %q (want demo, lock, elect or status; see natslease --help)\n", cmd)
	return exitUsage
}

// versionString is natslease's version from its build information: the
// module version (v0.1.0 when installed with go install ...@v0.1.0,
// "(devel)" or a pseudo-version for a build from a checkout) and the VCS
// revision when the build recorded one.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "natslease (unknown version: built without module information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	s := "natslease " + v
	var rev, modified string
	for _, kv := range bi.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.modified":
			modified = kv.Value
		}
	}
	if rev != "" {
		s += " revision " + rev
		if modified == "true" {
			s += " (modified)"
		}
	}
	return s + " " + bi.GoVersion
}

// cliCommand is one subcommand's flags and help.
type cliCommand struct {
	name  string
	usage string // the text before the flags in --help
	fs    *flag.FlagSet
}

func newCommand(name, usage string) *cliCommand {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &cliCommand{name: name, usage: usage, fs: fs}
}

// shortFlags are one-letter aliases, shown beside their long flag.
var shortFlags = map[string]string{"s": "server", "v": "verbose", "n": "candidates"}

// parsed is a command line after its flags were taken out.
type parsed struct {
	args    []string // positional arguments (KEY), before "--"
	command []string // what follows "--"
	dashes  bool     // "--" was given
}

var errHelp = errors.New("help requested")

// parse takes flags out of args wherever they appear before "--", so
// that "KEY --ttl 2s -- COMMAND" sets --ttl. A flag is "-name" or
// "--name", with its value after "=" or as the next argument (booleans
// take no separate value). Everything after the first "--" is returned
// as command, untouched.
func (c *cliCommand) parse(args []string) (parsed, error) {
	var p parsed
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			p.command, p.dashes = args[i+1:], true
			return p, nil
		}
		if len(a) < 2 || a[0] != '-' {
			p.args = append(p.args, a)
			continue
		}
		name := strings.TrimPrefix(a[1:], "-")
		if name == "" || name[0] == '-' || name[0] == '=' {
			return p, fmt.Errorf("bad flag syntax %q", a)
		}
		name, value, hasValue := strings.Cut(name, "=")
		if name == "h" || name == "help" {
			return p, errHelp
		}
		f := c.fs.Lookup(name)
		if f == nil {
			return p, fmt.Errorf("unknown flag --%s", name)
		}
		long := name
		if l, ok := shortFlags[name]; ok {
			long = l
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue {
			if i+1 == len(args) {
				return p, fmt.Errorf("--%s needs a value", long)
			}
			i++
			value = args[i]
		}
		if err := f.Value.Set(value); err != nil {
			return p, fmt.Errorf("--%s %s: %v", long, value, unwrapFlagErr(err))
		}
	}
	return p, nil
}

// unwrapFlagErr shortens the flag package's errors for its own types.
func unwrapFlagErr(err error) string {
	switch s := err.Error(); s {
	case "parse error":
		return "not a valid value"
	default:
		return s
	}
}

// help writes the command's usage and flags, in the --flag style.
func (c *cliCommand) help(w io.Writer) {
	fmt.Fprint(w, c.usage)
	fmt.Fprintln(w, "\nFlags:")
	short := map[string]string{}
	for s, l := range shortFlags {
		if c.fs.Lookup(s) != nil {
			short[l] = s
		}
	}
	c.fs.VisitAll(func(f *flag.Flag) {
		if _, isShort := shortFlags[f.Name]; isShort {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		line := "  "
		if s, ok := short[f.Name]; ok {
			line += "-" + s + ", "
		}
		line += "--" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintln(w, line)
		if f.DefValue != "" && f.DefValue != "false" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s\n", usage)
	})
}

// parseOrExit parses args; when natslease should stop (after --help, or
// on a usage error) it returns false and the exit status.
func (c *cliCommand) parseOrExit(args []string, stdout, stderr io.Writer) (parsed, bool, int) {
	p, err := c.parse(args)
	switch {
	case errors.Is(err, errHelp):
		c.help(stdout)
		return p, false, exitOK
	case err != nil:
		return p, false, usageError(stderr, c.name, "%v", err)
	}
	return p, true, exitOK
}

func usageError(stderr io.Writer, cmd, format string, args ...any) int {
	fmt.Fprintf(stderr, "natslease %s: %s (see natslease %s --help)\n", cmd, fmt.Sprintf(format, args...), cmd)
	return exitUsage
}

// fail prints err as one line and returns exitError.
func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "natslease: %s\n", oneLine(err))
	return exitError
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// keyAndCommand checks "KEY -- COMMAND ARGS..." of lock and elect.
func keyAndCommand(p parsed) (key string, argv []string, err error) {
	switch {
	case len(p.args) == 0:
		return "", nil, errors.New("missing KEY")
	case len(p.args) > 1:
		return "", nil, fmt.Errorf("unexpected %q after KEY %q: COMMAND goes after -- (KEY -- COMMAND ARGS...)", p.args[1], p.args[0])
	case !p.dashes:
		return "", nil, fmt.Errorf("missing -- COMMAND after KEY %q", p.args[0])
	case len(p.command) == 0:
		return "", nil, errors.New("missing COMMAND after --")
	}
	if err := checkKey(p.args[0]); err != nil {
		return "", nil, err
	}
	return p.args[0], p.command, nil
}

// checkKey refuses a KEY the server would not take, in CLI words.
func checkKey(key string) error {
	if err := natskvlease.ValidateKey(key); err != nil {
		return fmt.Errorf("bad KEY %q: %s", key, reason(err))
	}
	return nil
}

// checkBucket refuses a --bucket the server would not take.
func checkBucket(bucket string) error {
	if err := natskvlease.ValidateBucket(bucket); err != nil {
		return fmt.Errorf("bad --bucket %q: %s", bucket, reason(err))
	}
	return nil
}

// reason is the why of a configuration error, without the library's
// names for the field.
func reason(err error) string {
	var ce *natskvlease.ConfigError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return err.Error()
}

// durationFlag is a duration flag that refuses negative values and
// knows whether it was given.
type durationFlag struct {
	d   time.Duration
	set bool
}

func (o *durationFlag) String() string {
	if o == nil || (!o.set && o.d == 0) {
		return ""
	}
	return o.d.String()
}

func (o *durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration (examples: 500ms, 30s, 1m30s)")
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	o.d, o.set = d, true
	return nil
}

// durationVar registers a duration flag with a default.
func (c *cliCommand) durationVar(name string, def time.Duration, usage string) *durationFlag {
	f := &durationFlag{d: def}
	c.fs.Var(f, name, usage)
	return f
}

// atLeast refuses a duration flag below min.
func atLeast(name string, f *durationFlag, min time.Duration) error {
	if f.d < min {
		return fmt.Errorf("--%s %v is below the %v minimum", name, f.d, min)
	}
	return nil
}
