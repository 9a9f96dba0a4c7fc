package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// child is a command run under a lock or a leadership. It runs in its
// own process group, so that stopping it stops what it started too (a
// shell's children), and a Ctrl-C reaches it once, forwarded by
// natslease, rather than twice.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the command has exited
	err  error         // cmd.Wait's result, set before done is closed
}

func startChild(argv, env []string, stdout, stderr io.Writer) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin = os.Stdin
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second // do not hang on output pipes held by orphans
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// signal sends sig to the command's process group.
func (c *child) signal(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	if err := syscall.Kill(-c.cmd.Process.Pid, s); err != nil {
		_ = c.cmd.Process.Signal(s) // the group is gone; try the leader alone
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	c.signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
		return
	case <-t.C:
	}
	c.signal(syscall.SIGKILL)
	<-c.done
}

// status is the command's exit status as a shell reports it: 128+n when
// killed by signal n. Only valid once done is closed.
func (c *child) status() int {
	return exitStatus(c.err)
}

func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		if code := ee.ExitCode(); code >= 0 {
			return code
		}
	}
	return exitError
}

// childEnv is the environment of the command: natslease's, plus the key
// and the fencing token.
func childEnv(key string, token uint64) []string {
	return append(os.Environ(),
		"NATSLEASE_KEY="+key,
		"NATSLEASE_TOKEN="+formatUint(token),
	)
}
