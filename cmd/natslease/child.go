package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// child is a command run under a lock or a leadership, through a guard:
// natslease starts itself again as a small supervisor (see guard.go),
// which leads a process group of its own and runs the command in it.
// Signals from natslease (SIGTERM and SIGKILL when the holding ends,
// SIGINT and SIGTERM forwarded) go to the whole group, so a shell's
// children get them too, and a Ctrl-C reaches the command once.
//
// The guard is what keeps the command from outliving natslease: when
// natslease dies in any way (kill -9 included), the guard kills the
// whole group. It learns of the death in two ways: a pipe from
// natslease whose write end only natslease holds reads end-of-file,
// and on Linux the kernel's parent-death signal (Pdeathsig) arrives.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the command has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// startChild starts argv with env through the guard. The error says
// why the guard could not be started; a command that cannot be found is
// caught earlier by lookCommand, and otherwise makes the guard exit 127.
func startChild(argv, env []string, stdout, stderr io.Writer) (*child, error) {
	self, err := selfExecutable()
	if err != nil {
		return nil, fmt.Errorf("cannot find natslease's own executable to supervise %s: %w", argv[0], err)
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	args := append([]string{self, guardCommand, "--"}, argv...)
	cmd := &exec.Cmd{Path: self, Args: args, Env: env}
	cmd.Stdin = os.Stdin
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.ExtraFiles = []*os.File{lifeR} // fd 3 in the guard
	cmd.SysProcAttr = guardSysProcAttr()
	cmd.WaitDelay = time.Second // do not hang on output pipes held by orphans

	c := &child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	// The parent-death signal is tied to the thread that forks the
	// child, not to the process: the guard must be started, and waited
	// for, on one OS thread that lives as long as the guard. The
	// goroutine never unlocks, so its thread ends with it, after Wait.
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		// The guard is gone: the lifeline has done its work. Until now
		// this closure kept it open (and reachable: an unreachable
		// *os.File is closed by its finalizer).
		_ = lifeW.Close()
		close(c.done)
	}()
	err = <-started
	_ = lifeR.Close() // the guard has its copy
	if err != nil {
		_ = lifeW.Close()
		return nil, err
	}
	// lifeW stays open, unused, while the guard runs: its close when
	// natslease exits, however it exits, is the guard's signal.
	return c, nil
}

// lookCommand reports whether argv[0] can be run, as exec would find it.
func lookCommand(argv []string) error {
	_, err := exec.LookPath(argv[0])
	return err
}

// signal sends sig to the command's process group (the guard's).
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
