package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/natskvlease/natskvlease/dlock"
)

const lockUsage = `Usage: natslease lock [flags] KEY -- COMMAND [ARGS...]

Runs COMMAND while holding the distributed lock KEY (from the dlock
package), like "consul lock" or "etcdctl lock". The lock is renewed every
TTL/3 while COMMAND runs and released when it exits; natslease then exits
with COMMAND's status (128+N if it was killed by signal N).

COMMAND gets NATSLEASE_KEY and NATSLEASE_TOKEN, the fencing token, in its
environment: a number that grows with every holding of KEY. Pass it to the
resources COMMAND writes and have them refuse smaller ones.

If the lock is lost (the server or the network failed for longer than the
renewals can bridge), COMMAND is sent SIGTERM, then SIGKILL after --grace,
and natslease exits with COMMAND's status, or 1 if that was 0. SIGINT and
SIGTERM sent to natslease are forwarded to COMMAND, which runs in its own
process group.

If natslease itself dies (kill -9, a crash), COMMAND and everything in its
process group is killed at once: a guard process started with COMMAND
watches natslease (on Linux also through the kernel's parent-death
signal). A natslease that is paused (SIGSTOP, a frozen VM) cannot stop
COMMAND while the lock expires and another host takes it: make COMMAND's
writes carry NATSLEASE_TOKEN and have the resource refuse smaller tokens.

With --json, natslease's own lines on stderr are JSON objects, one per
event: acquired, released, lost, locked (taken by another holder),
command_exited (with "status"), interrupted and error, each with "time",
"event" and "key". Flags may also follow KEY; COMMAND comes after --.

Exit status: COMMAND's; 75 when the lock stayed taken (--wait 0, or --wait
ran out; the holder is named on stderr); 2 for usage errors; 1 for
natslease's other errors; 127 when COMMAND cannot be started.

Examples:
  # A cron job on several hosts that must run once: the first host runs
  # it, the others find it taken and exit 75 at once.
  natslease lock --wait 0 nightly-report -- ./make-report.sh

  # Wait up to a minute for the lock, with a 30s TTL.
  natslease lock --ttl 30s --wait 1m db.migrate -- ./migrate --token-from-env

  # The token and key, as the command sees them.
  natslease lock demo -- sh -c 'echo "$NATSLEASE_KEY holds token $NATSLEASE_TOKEN"'
`

func runLock(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newCommand("lock", lockUsage)
	var cf connFlags
	cf.register(c.fs, "", "")
	ttl := c.durationVar("ttl", dlock.DefaultTTL, "lock TTL, a `duration`: a holder that stops renewing loses the lock after it (at least 1s; all users of a bucket must agree)")
	wait := c.durationVar("wait", 0, "how long to wait for the lock, a `duration`; 0 tries once (default: wait forever)")
	grace := c.durationVar("grace", 5*time.Second, "`duration` between SIGTERM and SIGKILL when the lock is lost")
	bucket := c.fs.String("bucket", dlock.DefaultBucket, "KeyValue `bucket` holding the locks")
	verbose := c.fs.Bool("verbose", false, "report acquisition and release on stderr")
	c.fs.BoolVar(verbose, "v", false, "short for --verbose")
	jsonOut := c.fs.Bool("json", false, "report events on stderr as JSON lines (acquired, released, lost, locked, command_exited, error)")
	metricsAddr := c.fs.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (host:port) while natslease runs")
	p, ok, code := c.parseOrExit(args, stdout, stderr)
	if !ok {
		return code
	}
	key, argv, err := keyAndCommand(p)
	if err == nil {
		err = atLeast("ttl", ttl, dlock.MinTTL)
	}
	if err == nil {
		err = checkBucket(*bucket)
	}
	if err != nil {
		return usageError(stderr, "lock", "%v", err)
	}
	ev := &events{w: stderr, json: *jsonOut, verbose: *verbose}
	if err := lookCommand(argv); err != nil {
		ev.report("error", fmt.Sprintf("cannot run %s: %v", argv[0], err), "error", oneLine(err), "command", argv[0])
		return exitNoExec
	}

	// Signals are caught from the start: while waiting they end the
	// wait, once the command runs they are forwarded to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ms, err := serveMetrics(*metricsAddr)
	if err != nil {
		return ev.failed(err)
	}
	defer ms.close()
	nc, js, err := cf.connect(ctx)
	if err != nil {
		return ev.failed(err)
	}
	defer nc.Close()
	client, err := dlock.New(ctx, js, dlock.WithTTL(ttl.d), dlock.WithBucket(*bucket), dlock.WithMetrics(ms.sink()))
	if err != nil {
		return ev.failed(explain(err))
	}
	release := min(ttl.d, 5*time.Second)
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), release)
		defer cancel()
		_ = client.Close(cctx)
	}()

	l, code := acquireLock(ctx, client, key, *wait, sigs, ev)
	if l == nil {
		return code
	}
	ev.routine("acquired", fmt.Sprintf("locked %s (token %d)", key, l.Token()), "key", key, "token", l.Token())

	ch, err := startChild(argv, childEnv(key, l.Token()), stdout, stderr)
	if err != nil {
		_ = unlock(ctx, l, release)
		ev.report("error", fmt.Sprintf("cannot run %s: %v", argv[0], err), "error", oneLine(err), "command", argv[0])
		return exitNoExec
	}
	lost := false
wait:
	for {
		select {
		case <-ch.done:
			break wait
		case s := <-sigs:
			ch.signal(s)
		case <-l.Lost():
			lost = true
			ev.report("lost", fmt.Sprintf("lock %s lost; stopping %s (SIGTERM, SIGKILL after %v)", key, argv[0], grace.d),
				"key", key, "token", l.Token())
			ch.stop(grace.d)
			break wait
		}
	}
	status := ch.status()
	ev.routine("command_exited", fmt.Sprintf("%s exited with status %d", argv[0], status), "key", key, "command", argv[0], "status", status)
	unlockWithin := release
	if lost { // the key expires by itself; do not linger on a dead server
		unlockWithin = min(unlockWithin, 500*time.Millisecond)
	}
	if err := unlock(ctx, l, unlockWithin); errors.Is(err, dlock.ErrLockLost) && !lost {
		lost = true
		ev.report("lost", fmt.Sprintf("lock %s was lost while %s ran", key, argv[0]), "key", key, "token", l.Token())
	} else if err != nil && !lost {
		ev.report("error", fmt.Sprintf("releasing %s: %v (it expires within %v)", key, err, ttl.d), "key", key, "error", oneLine(err))
	} else if !lost {
		ev.routine("released", fmt.Sprintf("released %s", key), "key", key, "token", l.Token())
	}
	if lost && status == 0 {
		return exitError
	}
	return status
}

// acquireLock takes the lock as --wait says. On failure it returns nil
// and the exit status, having said why on stderr.
func acquireLock(ctx context.Context, client *dlock.Client, key string, wait durationFlag, sigs <-chan os.Signal, ev *events) (*dlock.Lock, int) {
	if wait.set && wait.d == 0 {
		l, err := client.TryLock(ctx, key)
		var le *dlock.LockedError
		switch {
		case errors.As(err, &le):
			ev.report("locked", fmt.Sprintf("%s is locked by %s", key, describeHolder(le.Holder)), holderFields(key, le.Holder)...)
			return nil, exitTempFail
		case err != nil:
			return nil, ev.failed(explain(err))
		}
		return l, exitOK
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if wait.set {
		wctx, cancel = context.WithTimeout(wctx, wait.d)
		defer cancel()
	}
	got := make(chan os.Signal, 1)
	stop := make(chan struct{})
	watcher := make(chan struct{})
	go func() {
		defer close(watcher)
		select {
		case s := <-sigs:
			got <- s
			cancel()
		case <-stop:
		}
	}()
	l, err := client.Lock(wctx, key)
	close(stop)
	<-watcher
	select {
	case s := <-got:
		if err == nil { // the lock came with the signal: give it back
			_ = unlock(ctx, l, min(client.TTL(), 5*time.Second))
		}
		ev.report("interrupted", fmt.Sprintf("interrupted while waiting for %s", key), "key", key, "signal", s.String())
		if sn, ok := s.(syscall.Signal); ok {
			return nil, 128 + int(sn)
		}
		return nil, exitError
	default:
	}
	if err == nil {
		return l, exitOK
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		var h dlock.HolderInfo
		hctx, hcancel := context.WithTimeout(ctx, 2*time.Second)
		defer hcancel()
		if hi, herr := client.Holder(hctx, key); herr == nil {
			h = hi
		}
		ev.report("locked", fmt.Sprintf("gave up waiting for %s after %v; it is locked by %s", key, wait.d, describeHolder(h)),
			append(holderFields(key, h), "waited", wait.d)...)
		return nil, exitTempFail
	}
	return nil, ev.failed(explain(err))
}

// unlock releases l, giving up after limit (the key then expires).
func unlock(ctx context.Context, l *dlock.Lock, limit time.Duration) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), limit)
	defer cancel()
	return l.Unlock(uctx)
}

// describeHolder names a lock's holder in one phrase.
func describeHolder(h dlock.HolderInfo) string {
	if h.Owner == "" {
		return "another holder (just released?)"
	}
	host := h.Hostname
	if host == "" {
		host = "an unknown host"
	}
	return fmt.Sprintf("pid %d on %s (owner %s, token %d, expires in %v unless renewed)",
		h.PID, host, h.Owner, h.Token, h.TimeLeft.Round(time.Millisecond))
}

// holderFields are a holder's JSON fields.
func holderFields(key string, h dlock.HolderInfo) []any {
	f := []any{"key", key}
	if h.Owner != "" {
		f = append(f, "owner", h.Owner, "hostname", h.Hostname, "pid", h.PID, "token", h.Token, "time_left", h.TimeLeft)
	}
	return f
}

func formatUint(n uint64) string { return strconv.FormatUint(n, 10) }
