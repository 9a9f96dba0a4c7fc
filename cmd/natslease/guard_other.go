//go:build unix && !linux

package main

import (
	"os"
	"syscall"
)

// Without Linux's parent-death signal the guard learns of natslease's
// death from the lifeline pipe alone, which closes when natslease exits
// however it exits. The guard runs in a process group of its own, which
// the command joins.
func guardSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// Should the guard be killed alone (it never is by natslease, which
// signals the whole group), the command is not told.
func commandSysProcAttr() *syscall.SysProcAttr { return nil }

func selfExecutable() (string, error) { return os.Executable() }
