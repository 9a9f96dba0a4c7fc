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
	"sync"
	"syscall"
	"time"

	"github.com/natskvlease/natskvlease/leadelect"
)

const electUsage = `Usage: natslease elect [flags] KEY -- COMMAND [ARGS...]

Campaigns in the leader election KEY (from the leadelect package) and runs
COMMAND only while this process leads: it is started when leadership
begins, sent SIGTERM (then SIGKILL after --grace) when leadership is lost,
and started again if leadership comes back. COMMAND gets NATSLEASE_KEY and
NATSLEASE_TOKEN, the term's fencing token, in its environment.

On SIGINT or SIGTERM natslease stops COMMAND, resigns (another candidate
takes over within milliseconds) and exits 0. If COMMAND exits by itself,
natslease resigns and exits with its status. Transitions are reported on
stderr. Flags go before KEY.

Examples:
  # Run the scheduler on exactly one of the hosts running this line.
  natslease elect --id "$(hostname)" scheduler -- ./scheduler --token-from-env

  # Who leads now:
  natslease status --kind election scheduler
`

var (
	errInterrupted   = errors.New("interrupted")
	errCommandExited = errors.New("command exited")
)

func runElect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("elect", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "", "")
	host, _ := os.Hostname()
	id := fs.String("id", host+"-"+strconv.Itoa(os.Getpid()), "this candidate's ID, as other candidates and status see it")
	ttl := fs.Duration("ttl", leadelect.DefaultTTL, "leadership TTL: a dead leader is replaced within about this long (at least 1s)")
	grace := fs.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL when leadership ends")
	bucket := fs.String("bucket", leadelect.DefaultBucket, "KeyValue bucket holding the election")
	if ok, code := parseFlags(fs, electUsage, args, stdout, stderr); !ok {
		return code
	}
	key, argv, err := splitCommand(fs.Args())
	if err != nil {
		return usageError(stderr, "elect", "%v", err)
	}
	if *ttl < leadelect.MinTTL {
		return usageError(stderr, "elect", "--ttl %v is below the 1s minimum", *ttl)
	}
	var outMu sync.Mutex
	logf := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(stderr, "natslease: "+format+"\n", args...)
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			logf("%v: stopping and resigning", s)
			cancel(errInterrupted)
		case <-runCtx.Done():
		}
	}()

	nc, js, err := cf.connect(runCtx)
	if err != nil {
		if errors.Is(context.Cause(runCtx), errInterrupted) {
			return exitOK
		}
		return fail(stderr, err)
	}
	defer nc.Close()
	e, err := leadelect.New(js, leadelect.Config{Bucket: *bucket, Key: key, ID: *id, TTL: *ttl})
	if err != nil {
		return fail(stderr, explain(err))
	}

	status := exitOK
	err = e.Run(runCtx, leadelect.Callbacks{
		OnStartedLeading: func(lctx context.Context) {
			token, _ := leadelect.TokenFromContext(lctx)
			logf("leading %s as %s (token %d); starting %s", key, *id, token, argv[0])
			ch, err := startChild(argv, childEnv(key, token), stdout, stderr)
			if err != nil {
				logf("cannot run %s: %v", argv[0], err)
				status = exitNoExec
				cancel(errCommandExited)
				return
			}
			select {
			case <-ch.done:
				status = ch.status()
				logf("%s exited with status %d; resigning", argv[0], status)
				cancel(errCommandExited)
			case <-lctx.Done():
				logf("leadership of %s ended; stopping %s", key, argv[0])
				ch.stop(*grace)
			}
		},
		OnNewLeader: func(leader string) {
			if leader != *id {
				logf("%s is led by %s", key, leader)
			}
		},
	})
	switch cause := context.Cause(runCtx); {
	case errors.Is(cause, errCommandExited):
		return status
	case errors.Is(cause, errInterrupted):
		return exitOK
	case err != nil:
		return fail(stderr, explain(err))
	}
	return exitOK
}
