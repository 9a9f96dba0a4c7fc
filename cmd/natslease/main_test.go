package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binary is natslease, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "natslease-test-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "natslease")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building natslease: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	// Every test waits for the processes it starts, so the os/exec
	// goroutines of child processes have ended by now: no exceptions.
	goleak.VerifyTestMain(cleanupM{m, dir})
}

// cleanupM removes the binary after the tests, before goleak's check.
type cleanupM struct {
	m   *testing.M
	dir string
}

func (c cleanupM) Run() int {
	defer func() { _ = os.RemoveAll(c.dir) }()
	return c.m.Run()
}

// proc is a natslease process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr syncBuffer
	done   chan struct{}
	status int
}

// start runs natslease with args in the background; the test's cleanup
// kills it if it is still running, and waits for it.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with more environment variables ("" entries are
// skipped).
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.Env = append(os.Environ(), "NATS_URL=") // only --server counts
	for _, e := range env {
		if e != "" {
			p.cmd.Env = append(p.cmd.Env, e)
		}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting natslease: %v", err)
	}
	go func() {
		p.status = exitStatus(p.cmd.Wait())
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// syncBuffer is a buffer that may be read while the process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (p *proc) stderrString() string { return p.stderr.String() }

// wait waits up to limit for the process to exit and returns its status.
func (p *proc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.status
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("natslease %v did not exit within %v\nstdout:\n%s\nstderr:\n%s", p.cmd.Args[1:], limit, &p.stdout, &p.stderr)
		return -1
	}
}

// runNatslease runs natslease to completion within limit.
func runNatslease(t *testing.T, limit time.Duration, args ...string) (status int, stdout, stderr string) {
	t.Helper()
	p := start(t, args...)
	status = p.wait(t, limit)
	return status, p.stdout.String(), p.stderr.String()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
}

// freePort returns a loopback port nobody listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

func signalProc(t *testing.T, p *proc, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

func atoi(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		t.Fatalf("%q is not a number: %v", s, err)
	}
	return n
}
