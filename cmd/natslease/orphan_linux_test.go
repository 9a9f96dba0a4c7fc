package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// killBound is the contract: once natslease is killed, its command and
// what the command started in its process group end within a second.
const killBound = time.Second

// A natslease killed with SIGKILL leaves nothing running: its command
// and the command's own child, a grandchild in its process group, end
// within a second. Both lock and elect.
func TestKill9EndsCommandAndItsGroup(t *testing.T) {
	srv := natstest.Start(t)
	for _, tc := range []struct{ mode, env string }{
		{"lock", ""}, {"elect", ""},
		// The parent-death signal alone, without the guard's lifeline.
		{"lock", testSignalOnlyEnv + "=1"}, {"elect", testSignalOnlyEnv + "=1"},
	} {
		mode := tc.mode
		name := mode
		if tc.env != "" {
			name += "/signal-only"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			pids := filepath.Join(dir, "pids")
			// The shell writes its pid and its background sleep's, then
			// waits for the sleep: the sleep is the grandchild.
			script := `sleep 300 & echo "$$ $!" > "$0.tmp" && mv "$0.tmp" "$0"; wait`
			args := []string{mode, "--server", srv.URL(), "--ttl", "2s"}
			if mode == "elect" {
				args = append(args, "--id", "kill9")
			}
			args = append(args, "orphans."+mode, "--", "sh", "-c", script, pids)
			p := startEnv(t, []string{tc.env}, args...)
			natstest.Eventually(t, 15*time.Second, "the command to start", func() bool { return fileExists(pids) })
			f := readLines(t, pids)
			if len(f) != 2 {
				t.Fatalf("pid file holds %q", f)
			}
			shell, sleep := int(atoi(t, f[0])), int(atoi(t, f[1]))
			if !alive(shell) || !alive(sleep) {
				t.Fatalf("the command (%d) or its child (%d) is not running before the kill", shell, sleep)
			}

			killed := time.Now()
			signalProc(t, p, syscall.SIGKILL)
			p.wait(t, 10*time.Second)
			var shellGone, sleepGone time.Duration
			deadline := killed.Add(10 * time.Second) // observe past the bound, to report
			for (shellGone == 0 || sleepGone == 0) && time.Now().Before(deadline) {
				if shellGone == 0 && !alive(shell) {
					shellGone = time.Since(killed)
				}
				if sleepGone == 0 && !alive(sleep) {
					sleepGone = time.Since(killed)
				}
				time.Sleep(2 * time.Millisecond) // polling interval, not synchronization
			}
			t.Logf("%s: after kill -9 of natslease, the command ended in %v and its child in %v",
				name, shellGone.Round(time.Microsecond), sleepGone.Round(time.Microsecond))
			if shellGone == 0 || shellGone > killBound {
				_ = syscall.Kill(shell, syscall.SIGKILL)
				t.Errorf("the command outlived natslease by %v (bound %v)", orForever(shellGone), killBound)
			}
			if sleepGone == 0 || sleepGone > killBound {
				_ = syscall.Kill(sleep, syscall.SIGKILL)
				t.Errorf("the command's child outlived natslease by %v (bound %v)", orForever(sleepGone), killBound)
			}
		})
	}
}

func orForever(d time.Duration) any {
	if d == 0 {
		return "more than 10s"
	}
	return d
}

// alive reports whether pid is a live process: not gone, not a zombie
// waiting to be reaped (the kill is done by then).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) STATE ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	state := b[i+2]
	return !strings.ContainsRune("ZXx", rune(state))
}
