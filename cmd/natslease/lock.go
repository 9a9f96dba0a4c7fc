package main

import (
	"context"
	"errors"
	"flag"
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
process group. Flags go before KEY.

Exit status: COMMAND's; 75 when the lock stayed taken (--wait 0, or --wait
ran out; the holder is named on stderr); 1 for natslease's own errors;
127 when COMMAND cannot be started.

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
	fs := flag.NewFlagSet("lock", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "", "")
	ttl := fs.Duration("ttl", dlock.DefaultTTL, "lock TTL: a holder that stops renewing loses the lock after it (at least 1s; all users of a bucket must agree)")
	var wait optDuration
	fs.Var(&wait, "wait", "how long to wait for the lock, a `duration`; 0 tries once (default: wait forever)")
	grace := fs.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL when the lock is lost")
	bucket := fs.String("bucket", dlock.DefaultBucket, "KeyValue bucket holding the locks")
	verbose := fs.Bool("v", false, "report acquisition and release on stderr")
	if ok, code := parseFlags(fs, lockUsage, args, stdout, stderr); !ok {
		return code
	}
	key, argv, err := splitCommand(fs.Args())
	if err != nil {
		return usageError(stderr, "lock", "%v", err)
	}
	if *ttl < dlock.MinTTL {
		return usageError(stderr, "lock", "--ttl %v is below the 1s minimum", *ttl)
	}
	logf := func(format string, args ...any) {
		if *verbose {
			fmt.Fprintf(stderr, "natslease: "+format+"\n", args...)
		}
	}

	// Signals are caught from the start: while waiting they end the
	// wait, once the command runs they are forwarded to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	nc, js, err := cf.connect(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	defer nc.Close()
	client, err := dlock.New(ctx, js, dlock.WithTTL(*ttl), dlock.WithBucket(*bucket))
	if err != nil {
		return fail(stderr, explain(err))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(*ttl, 5*time.Second))
		defer cancel()
		_ = client.Close(cctx)
	}()

	l, code := acquireLock(ctx, client, key, wait, sigs, stderr)
	if l == nil {
		return code
	}
	logf("locked %s (token %d)", key, l.Token())

	ch, err := startChild(argv, childEnv(key, l.Token()), stdout, stderr)
	if err != nil {
		_ = unlock(ctx, l, min(*ttl, 5*time.Second))
		fmt.Fprintf(stderr, "natslease: cannot run %s: %v\n", argv[0], err)
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
			fmt.Fprintf(stderr, "natslease: lock %s lost; stopping %s (SIGTERM, SIGKILL after %v)\n", key, argv[0], *grace)
			ch.stop(*grace)
			break wait
		}
	}
	status := ch.status()
	unlockWithin := min(*ttl, 5*time.Second)
	if lost { // the key expires by itself; do not linger on a dead server
		unlockWithin = min(unlockWithin, 500*time.Millisecond)
	}
	if err := unlock(ctx, l, unlockWithin); errors.Is(err, dlock.ErrLockLost) && !lost {
		lost = true
		fmt.Fprintf(stderr, "natslease: lock %s was lost while %s ran\n", key, argv[0])
	} else if err != nil && !lost {
		fmt.Fprintf(stderr, "natslease: releasing %s: %v (it expires within %v)\n", key, err, *ttl)
	} else if !lost {
		logf("released %s", key)
	}
	if lost && status == 0 {
		return exitError
	}
	return status
}

// acquireLock takes the lock as --wait says. On failure it returns nil
// and the exit status, having said why on stderr.
func acquireLock(ctx context.Context, client *dlock.Client, key string, wait optDuration, sigs <-chan os.Signal, stderr io.Writer) (*dlock.Lock, int) {
	if wait.set && wait.d == 0 {
		l, err := client.TryLock(ctx, key)
		var le *dlock.LockedError
		switch {
		case errors.As(err, &le):
			fmt.Fprintf(stderr, "natslease: %s is locked by %s\n", key, describeHolder(le.Holder))
			return nil, exitTempFail
		case err != nil:
			return nil, fail(stderr, explain(err))
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
		fmt.Fprintf(stderr, "natslease: interrupted while waiting for %s\n", key)
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
		holder := "another holder"
		hctx, hcancel := context.WithTimeout(ctx, 2*time.Second)
		defer hcancel()
		if h, herr := client.Holder(hctx, key); herr == nil {
			holder = describeHolder(h)
		}
		fmt.Fprintf(stderr, "natslease: gave up waiting for %s after %v; it is locked by %s\n", key, wait.d, holder)
		return nil, exitTempFail
	}
	return nil, fail(stderr, explain(err))
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

func formatUint(n uint64) string { return strconv.FormatUint(n, 10) }
