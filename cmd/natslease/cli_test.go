package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// In process: help and usage errors need no server.
func TestHelpAndUsageErrors(t *testing.T) {
	for _, cmd := range []string{"demo", "lock", "elect", "status"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{cmd, "--help"}, &out, &errOut); code != 0 {
			t.Errorf("%s --help: status %d, stderr %q", cmd, code, &errOut)
		}
		if !strings.Contains(out.String(), "Examples:") || !strings.Contains(out.String(), "Usage: natslease "+cmd) || !strings.Contains(out.String(), "-s, --server URL") {
			t.Errorf("%s --help lacks usage, examples or flags:\n%s", cmd, &out)
		}
		// Every flag is shown as --flag (a short alias as -x, --flag).
		for _, line := range strings.Split(out.String(), "\n") {
			if f, ok := strings.CutPrefix(line, "  -"); ok && !strings.HasPrefix(f, "-") && !strings.Contains(line, ", --") {
				t.Errorf("%s --help shows a single-dash flag: %q", cmd, line)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string // in the one-line error
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"lock", "--bogus", "k", "--", "true"}, "unknown flag --bogus"},
		{[]string{"lock", "k"}, "missing -- COMMAND"},
		{[]string{"lock", "k", "true"}, `unexpected "true" after KEY "k": COMMAND goes after --`},
		{[]string{"lock", "bad key!", "--", "true"}, `bad KEY "bad key!"`},
		{[]string{"lock", "--ttl", "100ms", "k", "--", "true"}, "--ttl 100ms is below the 1s minimum"},
		{[]string{"lock", "--ttl", "0", "k", "--", "true"}, "--ttl 0s is below the 1s minimum"},
		{[]string{"lock", "k", "--ttl", "0", "--", "true"}, "--ttl 0s is below the 1s minimum"},
		{[]string{"lock", "k", "--ttl", "2s", "--bogus", "--", "true"}, "unknown flag --bogus"},
		{[]string{"lock", "k", "--ttl"}, "--ttl needs a value"},
		{[]string{"lock", "--wait", "-1s", "k", "--", "true"}, "--wait -1s: must not be negative"},
		{[]string{"lock", "--grace", "-1s", "k", "--", "true"}, "--grace -1s: must not be negative"},
		{[]string{"lock", "--grace", "soon", "k", "--", "true"}, "--grace soon: not a duration"},
		{[]string{"lock", "--bucket", "a.b", "k", "--", "true"}, `bad --bucket "a.b"`},
		{[]string{"elect", "k", "--"}, "missing COMMAND after --"},
		{[]string{"elect", "--id", "", "k", "--", "true"}, "--id must not be empty"},
		{[]string{"elect", "k", "--grace=-2s", "--", "true"}, "--grace -2s: must not be negative"},
		{[]string{"elect", "k", "--ttl", "500ms", "--", "true"}, "--ttl 500ms is below the 1s minimum"},
		{[]string{"status"}, "want exactly one KEY, got 0"},
		{[]string{"status", "k", "j"}, "want exactly one KEY, got 2"},
		{[]string{"status", "--kind", "queue", "k"}, `--kind "queue" is neither lock nor election`},
		{[]string{"status", "k", "--json=maybe"}, "--json maybe: not a valid value"},
		{[]string{"demo", "-n", "1"}, "--candidates 1: the demo needs at least 2"},
		{[]string{"demo", "--ttl", "0s"}, "--ttl 0s is below the 1s minimum"},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errOut)
		if code != exitUsage {
			t.Errorf("%q: status %d, want %d", tc.args, code, exitUsage)
		}
		msg := strings.TrimSpace(errOut.String())
		if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
			t.Errorf("%q: stderr %q; want one line containing %q", tc.args, msg, tc.want)
		}
		for _, libraryWord := range []string{"Config.", "leadelect.", "dlock.", "natskvlease:"} {
			if strings.Contains(msg, libraryWord) {
				t.Errorf("%q: stderr %q speaks of the library (%q)", tc.args, msg, libraryWord)
			}
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), nil, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), "Usage:") {
		t.Errorf("no arguments: status %d, stderr %q; want %d and the usage", code, &errOut, exitUsage)
	}
}

// Flags written after KEY are flags, not the command: --ttl 2s after KEY
// sets the TTL (status shows it), and the command is what follows --.
func TestLockFlagsAfterKey(t *testing.T) {
	srv := natstest.Start(t)
	out := t.TempDir() + "/out"
	code, _, stderr := runNatslease(t, 20*time.Second, "lock", "flags.after", "--server", srv.URL(), "--ttl", "2s", "--json", "--",
		"sh", "-c", `echo "$@" > "$0"`, out, "--ttl", "3s")
	if code != 0 {
		t.Fatalf("status %d; stderr %q", code, stderr)
	}
	if got := readLines(t, out); strings.Join(got, " ") != "--ttl 3s" {
		t.Errorf("the command saw %q; want the arguments after -- untouched", got)
	}
	// The bucket was created with the TTL given after KEY.
	code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "--json", "flags.after")
	if code != exitFree {
		t.Fatalf("status: %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	holder := holdLock(t, srv.URL(), "flags.after", "--ttl", "2s")
	defer func() { signalProc(t, holder, 15); holder.wait(t, 10*time.Second) }()
	var r statusReport
	code, stdout, _ = runNatslease(t, 10*time.Second, "status", "flags.after", "--server", srv.URL(), "--json")
	if err := json.Unmarshal([]byte(stdout), &r); err != nil || code != 0 || r.TTL == nil || *r.TTL != 2 {
		t.Errorf("status --json: %d, %q (%v); want held with ttl 2", code, stdout, err)
	}
}

func TestLockExitsWithCommandStatus(t *testing.T) {
	srv := natstest.Start(t)
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 3", 3},
		{"kill -KILL $$", 128 + 9},
	} {
		code, _, stderr := runNatslease(t, 20*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "status.key", "--", "sh", "-c", tc.script)
		if code != tc.want {
			t.Errorf("sh -c %q: status %d, want %d; stderr %q", tc.script, code, tc.want, stderr)
		}
	}
	code, _, stderr := runNatslease(t, 20*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "status.key", "--", "/no/such/command")
	if code != exitNoExec || !strings.Contains(stderr, "/no/such/command") {
		t.Errorf("missing command: status %d, stderr %q; want %d naming it", code, stderr, exitNoExec)
	}
}

func TestLockPassesKeyAndToken(t *testing.T) {
	srv := natstest.Start(t)
	out := t.TempDir() + "/env"
	var tokens []uint64
	for range 2 {
		code, _, stderr := runNatslease(t, 20*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "jobs.env", "--",
			"sh", "-c", `echo "$NATSLEASE_KEY $NATSLEASE_TOKEN" > "$0"`, out)
		if code != 0 {
			t.Fatalf("status %d; stderr %q", code, stderr)
		}
		f := readLines(t, out)
		if len(f) != 2 || f[0] != "jobs.env" {
			t.Fatalf("command saw %q, want the key and a token", f)
		}
		tokens = append(tokens, atoi(t, f[1]))
	}
	if tokens[0] == 0 || tokens[1] <= tokens[0] {
		t.Errorf("tokens %v: want positive and growing", tokens)
	}
}

func TestLockContendedCommandsDoNotOverlap(t *testing.T) {
	srv := natstest.Start(t)
	log := t.TempDir() + "/log"
	const n = 4
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = start(t, "lock", "--server", srv.URL(), "--ttl", "2s", "cron.once", "--",
			"sh", "-c", `echo start >> "$0"; sleep 0.3; echo end >> "$0"`, log)
	}
	for i, p := range procs {
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Errorf("process %d: status %d; stderr %q", i, code, &p.stderr)
		}
	}
	lines := readLines(t, log)
	if len(lines) != 2*n {
		t.Fatalf("log has %d lines, want %d: %q", len(lines), 2*n, lines)
	}
	for i, l := range lines {
		want := "start"
		if i%2 == 1 {
			want = "end"
		}
		if l != want {
			t.Fatalf("line %d is %q, want %q: commands overlapped: %q", i, l, want, lines)
		}
	}
}

// holdLock starts a natslease lock whose command signals readiness and
// then sleeps; it returns once the command runs.
func holdLock(t *testing.T, url, key string, extra ...string) *proc {
	t.Helper()
	ready := t.TempDir() + "/ready"
	args := append([]string{"lock", "--server", url}, extra...)
	args = append(args, key, "--", "sh", "-c", `touch "$0"; sleep 30`, ready)
	p := start(t, args...)
	natstest.Eventually(t, 15*time.Second, "the holder's command to start", func() bool { return fileExists(ready) })
	return p
}

func TestLockWaitZeroOnTakenLockExits75(t *testing.T) {
	srv := natstest.Start(t)
	holder := holdLock(t, srv.URL(), "cron.taken", "--ttl", "2s")
	start := time.Now()
	code, _, stderr := runNatslease(t, 10*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "--wait", "0", "cron.taken", "--", "true")
	if code != exitTempFail {
		t.Fatalf("status %d, want %d; stderr %q", code, exitTempFail, stderr)
	}
	if want := fmt.Sprintf("pid %d", holder.cmd.Process.Pid); !strings.Contains(stderr, want) || !strings.Contains(stderr, "locked by") {
		t.Errorf("stderr %q does not name the holder (%s)", stderr, want)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("--wait 0 took %v", d)
	}
	// A bounded wait that runs out is a temporary failure too.
	code, _, stderr = runNatslease(t, 10*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "--wait", "300ms", "cron.taken", "--", "true")
	if code != exitTempFail || !strings.Contains(stderr, "gave up waiting") {
		t.Errorf("--wait 300ms: status %d, stderr %q", code, stderr)
	}
	// SIGTERM to natslease reaches the command, and the lock is released.
	signalProc(t, holder, 15)
	if code := holder.wait(t, 10*time.Second); code != 128+15 {
		t.Errorf("holder after SIGTERM: status %d, want %d; stderr %q", code, 128+15, &holder.stderr)
	}
	code, _, stderr = runNatslease(t, 10*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "--wait", "0", "cron.taken", "--", "true")
	if code != 0 {
		t.Errorf("after the holder released: status %d; stderr %q", code, stderr)
	}
}

func TestLockLostStopsCommand(t *testing.T) {
	srv := natstest.Start(t)
	const ttl, grace = 2 * time.Second, time.Second
	marker := t.TempDir() + "/running"
	p := start(t, "lock", "--server", srv.URL(), "--ttl", ttl.String(), "--grace", grace.String(), "lost.key", "--",
		"sh", "-c", `touch "$0"; sleep 60; echo survived > "$0.after"`, marker)
	natstest.Eventually(t, 15*time.Second, "the command to start", func() bool { return fileExists(marker) })
	stopped := time.Now()
	srv.Shutdown()
	code := p.wait(t, ttl+grace+8*time.Second)
	if code == 0 {
		t.Errorf("status 0 after the lock was lost; stderr %q", &p.stderr)
	}
	if !strings.Contains(p.stderr.String(), "lost") {
		t.Errorf("stderr %q does not say the lock was lost", &p.stderr)
	}
	if fileExists(marker + ".after") {
		t.Errorf("the command ran on after the loss")
	}
	t.Logf("exited %v after the server stopped, status %d", time.Since(stopped).Round(time.Millisecond), code)
}

func TestStatusFreeThenHolder(t *testing.T) {
	srv := natstest.Start(t)
	code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "st.key")
	if code != exitFree || !strings.Contains(stdout, "free") {
		t.Fatalf("no bucket yet: status %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	holder := holdLock(t, srv.URL(), "st.key", "--ttl", "2s")
	code, stdout, stderr = runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "st.key")
	if code != 0 || !strings.Contains(stdout, "held") || !strings.Contains(stdout, "token:") ||
		!strings.Contains(stdout, fmt.Sprintf("pid:       %d", holder.cmd.Process.Pid)) || !strings.Contains(stdout, "time left:") {
		t.Fatalf("held: status %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	signalProc(t, holder, 15)
	holder.wait(t, 10*time.Second)
	code, stdout, stderr = runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "st.key")
	if code != exitFree || !strings.Contains(stdout, "free") {
		t.Fatalf("released: status %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestElectRunsCommandOnlyWhileLeading(t *testing.T) {
	srv := natstest.Start(t)
	log := t.TempDir() + "/log"
	script := `trap 'echo end >> "$0"; exit 0' TERM; echo start-$NATSLEASE_TOKEN >> "$0"; while :; do sleep 0.05; done`
	a := start(t, "elect", "--server", srv.URL(), "--ttl", "2s", "--id", "a", "sched", "--", "sh", "-c", script, log)
	natstest.Eventually(t, 15*time.Second, "a's command to start", func() bool { return len(readLines(t, log)) == 1 })
	b := start(t, "elect", "--server", srv.URL(), "--ttl", "2s", "--id", "b", "sched", "--", "sh", "-c", script, log)

	code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "--kind", "election", "sched")
	if code != 0 || !strings.Contains(stdout, "sched: held\n") || !strings.Contains(stdout, "leader:    a") {
		t.Errorf("status --kind election: %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if lines := readLines(t, log); len(lines) != 1 {
		t.Fatalf("b runs its command while a leads: %q", lines)
	}
	signalProc(t, a, 15) // a resigns; b takes over at once
	if code := a.wait(t, 10*time.Second); code != 0 {
		t.Errorf("a after SIGTERM: status %d; stderr %q", code, &a.stderr)
	}
	natstest.Eventually(t, 10*time.Second, "b's command to start", func() bool { return len(readLines(t, log)) == 3 })
	signalProc(t, b, 15)
	if code := b.wait(t, 10*time.Second); code != 0 {
		t.Errorf("b after SIGTERM: status %d; stderr %q", code, &b.stderr)
	}
	lines := readLines(t, log)
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "start-") || lines[1] != "end" || !strings.HasPrefix(lines[2], "start-") || lines[3] != "end" {
		t.Fatalf("log %q: want start, end, start, end", lines)
	}
	if t1, t2 := atoi(t, strings.TrimPrefix(lines[0], "start-")), atoi(t, strings.TrimPrefix(lines[2], "start-")); t2 <= t1 || t1 == 0 {
		t.Errorf("tokens %d then %d: want growing", t1, t2)
	}
}

func TestDemo(t *testing.T) {
	code, stdout, stderr := runNatslease(t, 60*time.Second, "demo", "-n", "3", "--ttl", "1s")
	if code != 0 {
		t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"embedded nats-server", "killing candidate-", "failover:", "handoff:", "done"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	t.Logf("demo output:\n%s", stdout)
}

func TestUnreachableServer(t *testing.T) {
	url := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	for _, args := range [][]string{
		{"lock", "--server", url, "k", "--", "true"},
		{"elect", "--server", url, "k", "--", "true"},
		{"status", "--server", url, "k"},
	} {
		code, _, stderr := runNatslease(t, 15*time.Second, args...)
		want := "natslease: cannot connect to " + url + ": connection refused\n"
		if code != 1 || stderr != want {
			t.Errorf("%s: status %d, stderr %q; want 1 and %q", args[0], code, stderr, want)
		}
	}
}

func TestServerWithoutJetStream(t *testing.T) {
	srv := natstest.Start(t, natstest.WithoutJetStream())
	for _, args := range [][]string{
		{"lock", "--server", srv.URL(), "k", "--", "true"},
		{"elect", "--server", srv.URL(), "k", "--", "true"},
		{"status", "--server", srv.URL(), "k"},
	} {
		code, _, stderr := runNatslease(t, 15*time.Second, args...)
		if code != 1 || !strings.Contains(stderr, "JetStream is not enabled") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: status %d, stderr %q; want 1 and one line saying JetStream is not enabled", args[0], code, stderr)
		}
	}
}
