package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// status exits 0 when the key is held and 3 when it is free, for locks
// and elections alike, and --json prints one object with the same facts.
func TestStatusExitCodesAndJSON(t *testing.T) {
	srv := natstest.Start(t)
	statusJSON := func(kind, key string) (int, statusReport) {
		t.Helper()
		code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "--kind", kind, "--json", key)
		var r statusReport
		if err := json.Unmarshal([]byte(stdout), &r); err != nil || strings.Count(stdout, "\n") != 1 {
			t.Fatalf("status --json %s: stdout %q is not one JSON line (%v); stderr %q", key, stdout, err, stderr)
		}
		return code, r
	}

	code, r := statusJSON("lock", "js.lock")
	if code != exitFree || r.Held || r.Key != "js.lock" || r.Bucket != "dlock" || r.Kind != "lock" {
		t.Errorf("free lock: status %d, %+v", code, r)
	}
	holder := holdLock(t, srv.URL(), "js.lock", "--ttl", "2s")
	code, r = statusJSON("lock", "js.lock")
	if code != exitOK || !r.Held || r.PID != holder.cmd.Process.Pid || r.Owner == "" || r.Token == 0 || r.Revision < r.Token ||
		r.TimeLeft == nil || *r.TimeLeft <= 0 || *r.TimeLeft > 2 || r.TTL == nil || *r.TTL != 2 || r.AcquiredAt == "" {
		t.Errorf("held lock: status %d, %+v", code, r)
	}
	signalProc(t, holder, 15)
	holder.wait(t, 10*time.Second)
	if code, r = statusJSON("lock", "js.lock"); code != exitFree || r.Held {
		t.Errorf("released lock: status %d, %+v", code, r)
	}

	if code, r = statusJSON("election", "js.elect"); code != exitFree || r.Held || r.Bucket != "leadelect" {
		t.Errorf("free election: status %d, %+v", code, r)
	}
	ready := t.TempDir() + "/ready"
	leader := start(t, "elect", "--server", srv.URL(), "--ttl", "2s", "--id", "node-a", "js.elect", "--", "sh", "-c", `touch "$0"; sleep 30`, ready)
	natstest.Eventually(t, 15*time.Second, "the leader's command to start", func() bool { return fileExists(ready) })
	if code, r = statusJSON("election", "js.elect"); code != exitOK || !r.Held || r.Leader != "node-a" || r.Token == 0 || r.Since == "" {
		t.Errorf("led election: status %d, %+v", code, r)
	}
	code, stdout, _ := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "--kind", "election", "js.elect")
	if code != exitOK || !strings.HasPrefix(stdout, "leadelect/js.elect: held\n") {
		t.Errorf("election text: status %d, %q; want \"held\"", code, stdout)
	}
	signalProc(t, leader, 15)
	leader.wait(t, 10*time.Second)

	// An error is 1, distinct from free.
	code, _, _ = runNatslease(t, 10*time.Second, "status", "--server", fmt.Sprintf("nats://127.0.0.1:%d", freePort(t)), "js.lock")
	if code != exitError {
		t.Errorf("unreachable server: status %d, want %d", code, exitError)
	}
}

// lock --json and elect --json report their events as JSON lines on
// stderr; the command's own output is left alone.
func TestJSONEvents(t *testing.T) {
	srv := natstest.Start(t)
	code, stdout, stderr := runNatslease(t, 20*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "--json", "ev.lock", "--", "sh", "-c", "echo out; exit 5")
	if code != 5 || stdout != "out\n" {
		t.Fatalf("lock --json: status %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	evs := jsonLines(t, stderr)
	if got := eventNames(evs); got != "acquired command_exited released" {
		t.Errorf("lock events %q, want acquired, command_exited, released; stderr %q", got, stderr)
	}
	if evs[0]["key"] != "ev.lock" || evs[0]["token"].(float64) <= 0 || evs[1]["status"].(float64) != 5 {
		t.Errorf("lock events lack their fields: %v", evs)
	}

	holder := holdLock(t, srv.URL(), "ev.lock", "--ttl", "2s")
	code, _, stderr = runNatslease(t, 10*time.Second, "lock", "--server", srv.URL(), "--ttl", "2s", "--wait", "0", "--json", "ev.lock", "--", "true")
	evs = jsonLines(t, stderr)
	if code != exitTempFail || eventNames(evs) != "locked" || evs[0]["pid"].(float64) != float64(holder.cmd.Process.Pid) {
		t.Errorf("lock --json on a taken key: status %d, stderr %q", code, stderr)
	}
	signalProc(t, holder, 15)
	holder.wait(t, 10*time.Second)

	script := `exec 2>/dev/null; trap 'exit 0' TERM; touch "$0"; while :; do sleep 0.05; done`
	readyA, readyB := t.TempDir()+"/a", t.TempDir()+"/b"
	a := start(t, "elect", "--server", srv.URL(), "--ttl", "2s", "--id", "a", "--json", "ev.elect", "--", "sh", "-c", script, readyA)
	natstest.Eventually(t, 15*time.Second, "a to lead", func() bool { return fileExists(readyA) })
	b := start(t, "elect", "--server", srv.URL(), "--ttl", "2s", "--id", "b", "--json", "ev.elect", "--", "sh", "-c", script, readyB)
	natstest.Eventually(t, 15*time.Second, "b to see a lead", func() bool { return strings.Contains(b.stderrString(), `"event":"leader"`) })
	signalProc(t, a, 15)
	a.wait(t, 10*time.Second)
	natstest.Eventually(t, 15*time.Second, "b to lead", func() bool { return fileExists(readyB) })
	signalProc(t, b, 15)
	b.wait(t, 10*time.Second)
	if got := eventNames(jsonLines(t, a.stderr.String())); got != "leading resigning stopped_leading command_exited" {
		t.Errorf("a's events %q; stderr %q", got, &a.stderr)
	}
	evs = jsonLines(t, b.stderr.String())
	if got := eventNames(evs); got != "leader leading resigning stopped_leading command_exited" || evs[0]["leader"] != "a" {
		t.Errorf("b's events %q; stderr %q", got, &b.stderr)
	}
}

func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stderr line %q is not JSON: %v", sc.Text(), err)
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"])); err != nil {
			t.Errorf("line %q: no time: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func eventNames(evs []map[string]any) string {
	var names []string
	for _, e := range evs {
		names = append(names, fmt.Sprint(e["event"]))
	}
	return strings.Join(names, " ")
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "version"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{arg}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "natslease ") {
			t.Errorf("%s: status %d, stdout %q", arg, code, &out)
		}
	}
	// The built binary names a module version ("(devel)" or a
	// pseudo-version from the checkout) and the Go version.
	code, stdout, _ := runNatslease(t, 10*time.Second, "--version")
	if f := strings.Fields(stdout); code != 0 || len(f) < 3 || f[0] != "natslease" || f[1] == "" || !strings.HasPrefix(f[len(f)-1], "go1.") {
		t.Errorf("--version: status %d, %q", code, stdout)
	}
	t.Logf("--version: %s", strings.TrimSpace(stdout))
}
