package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
)

// guardCommand is the hidden first argument with which natslease runs
// itself as the guard of a command: natslease __guard -- COMMAND ARGS...
// It is not meant to be typed.
const guardCommand = "__guard"

// testSignalOnlyEnv, set to 1, makes the guard ignore its lifeline: for
// tests only.
const testSignalOnlyEnv = "NATSLEASE_TEST_GUARD_SIGNAL_ONLY"

// lifelineFD is the guard's end of the pipe from natslease (ExtraFiles[0]).
const lifelineFD = 3

// runGuard is the guard: the leader of the command's process group and
// the command's parent. It runs the command and exits with its status
// (128+N when a signal N killed it). When natslease, its parent, dies
// first, it kills the whole group with SIGKILL at once: the holding is
// no longer renewed, so the command must end before another holder can
// begin, and there is no time to offer it a grace period safely.
//
// Signals sent to the group by natslease (SIGINT, SIGTERM, SIGHUP) also
// reach the guard: it catches them and leaves them to the command, which
// got them too. SIGKILL from natslease ends the guard with the group.
func runGuard(args []string, stderr io.Writer) int {
	// The command is started from this thread, which lives as long as
	// the process, so that its parent-death signal means the guard died.
	runtime.LockOSThread()
	if len(args) < 2 || args[0] != "--" {
		fmt.Fprintln(stderr, "natslease: __guard is internal to natslease")
		return exitUsage
	}
	argv := args[1:]
	parent := os.Getppid()

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	parentGone := make(chan struct{})
	var st syscall.Stat_t
	// The tests turn the lifeline off to show that the parent-death
	// signal alone is enough on Linux.
	if syscall.Fstat(lifelineFD, &st) == nil && os.Getenv(testSignalOnlyEnv) != "1" {
		life := os.NewFile(lifelineFD, "natslease lifeline")
		syscall.CloseOnExec(lifelineFD) // the command has no use for it
		go func() {
			// natslease never writes: the read ends when its end closes,
			// which happens when natslease exits, however it exits.
			_, _ = io.Copy(io.Discard, life)
			close(parentGone)
		}()
	}
	if os.Getppid() != parent || parent == 1 {
		killGroup() // natslease died before the signals were caught
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = commandSysProcAttr()
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "natslease: cannot run %s: %v\n", argv[0], err)
		return exitNoExec
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			return guardStatus(err)
		case <-parentGone:
			killGroup()
		case <-sigs:
			// The parent-death signal is SIGTERM too: tell it from one
			// natslease sent by asking who the parent is now.
			if os.Getppid() != parent {
				killGroup()
			}
		}
	}
}

// killGroup kills the guard's process group, the guard included.
func killGroup() {
	_ = syscall.Kill(0, syscall.SIGKILL)
	select {} // SIGKILL is on its way
}

// guardStatus turns the command's end into the guard's exit status, the
// number a shell would show: its exit code, or 128+N if signal N killed
// it. natslease reports that number as the command's status.
func guardStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return exitError
}
