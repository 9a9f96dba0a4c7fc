package main

import "syscall"

// On Linux the kernel tells the guard of natslease's death too: the
// parent-death signal, sent when the thread that started the guard ends
// (startChild keeps that thread for the guard's whole life). The guard
// runs in a process group of its own, which the command joins.
func guardSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// The command itself dies with the guard, should the guard be killed
// alone.
func commandSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// selfExecutable is natslease's own binary, even if its file was
// replaced or removed since it started.
func selfExecutable() (string, error) { return "/proc/self/exe", nil }
