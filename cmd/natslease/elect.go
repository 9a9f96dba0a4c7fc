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
	"unicode/utf8"

	"github.com/natskvlease/natskvlease/leadelect"
)

const electUsage = `Usage: natslease elect [flags] KEY -- COMMAND [ARGS...]

Campaigns in the leader election KEY (from the leadelect package) and runs
COMMAND only while this process leads: it is started when leadership
begins, sent SIGTERM (then SIGKILL after --grace) when leadership is lost,
and started again if leadership comes back. COMMAND gets NATSLEASE_KEY and
NATSLEASE_TOKEN, the term's fencing token, in its environment.

If natslease itself dies (kill -9, a crash), COMMAND and everything in its
process group is killed at once, as with natslease lock. A paused
natslease cannot stop COMMAND while another candidate takes over: make
COMMAND's writes carry NATSLEASE_TOKEN and have the resource refuse
smaller tokens.

On SIGINT or SIGTERM natslease stops COMMAND, resigns (another candidate
takes over within milliseconds) and exits 0. If COMMAND exits by itself,
natslease resigns and exits with its status. Transitions are reported on
stderr; with --json as JSON objects, one per line: leading (with
"token"), leader (another candidate leads: "leader"), stopped_leading,
command_exited (with "status"), resigning and error. Flags may also follow
KEY; COMMAND comes after --.

Exit status: COMMAND's when it exits by itself; 0 after SIGINT or
SIGTERM; 2 for usage errors; 1 for natslease's other errors; 127 when
COMMAND cannot be started.

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
	c := newCommand("elect", electUsage)
	var cf connFlags
	cf.register(c.fs, "", "")
	host, _ := os.Hostname()
	id := c.fs.String("id", host+"-"+strconv.Itoa(os.Getpid()), "this candidate's `ID`, as other candidates and status see it")
	ttl := c.durationVar("ttl", leadelect.DefaultTTL, "leadership TTL, a `duration`: a dead leader is replaced within about this long (at least 1s)")
	grace := c.durationVar("grace", 5*time.Second, "`duration` between SIGTERM and SIGKILL when leadership ends")
	bucket := c.fs.String("bucket", leadelect.DefaultBucket, "KeyValue `bucket` holding the election")
	jsonOut := c.fs.Bool("json", false, "report events on stderr as JSON lines (leading, leader, stopped_leading, command_exited, resigning, error)")
	metricsAddr := c.fs.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (host:port) while natslease runs")
	p, ok, code := c.parseOrExit(args, stdout, stderr)
	if !ok {
		return code
	}
	key, argv, err := keyAndCommand(p)
	switch {
	case err != nil:
	case *id == "":
		err = errors.New("--id must not be empty")
	case !utf8.ValidString(*id):
		err = fmt.Errorf("--id %q is not valid UTF-8", *id)
	default:
		if err = atLeast("ttl", ttl, leadelect.MinTTL); err == nil {
			err = checkBucket(*bucket)
		}
	}
	if err != nil {
		return usageError(stderr, "elect", "%v", err)
	}
	ev := &events{w: stderr, json: *jsonOut, verbose: true}
	if err := lookCommand(argv); err != nil {
		ev.report("error", fmt.Sprintf("cannot run %s: %v", argv[0], err), "error", oneLine(err), "command", argv[0])
		return exitNoExec
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			ev.report("resigning", fmt.Sprintf("%v: stopping and resigning", s), "key", key, "id", *id, "signal", s.String())
			cancel(errInterrupted)
		case <-runCtx.Done():
		}
	}()

	ms, err := serveMetrics(*metricsAddr)
	if err != nil {
		return ev.failed(err)
	}
	defer ms.close()
	nc, js, err := cf.connect(runCtx)
	if err != nil {
		if errors.Is(context.Cause(runCtx), errInterrupted) {
			return exitOK
		}
		return ev.failed(err)
	}
	defer nc.Close()
	e, err := leadelect.New(js, leadelect.Config{Bucket: *bucket, Key: key, ID: *id, TTL: ttl.d, Metrics: ms.sink()})
	if err != nil {
		return ev.failed(explain(err))
	}

	status := exitOK
	err = e.Run(runCtx, leadelect.Callbacks{
		OnStartedLeading: func(lctx context.Context) {
			token, _ := leadelect.TokenFromContext(lctx)
			ev.report("leading", fmt.Sprintf("leading %s as %s (token %d); starting %s", key, *id, token, argv[0]),
				"key", key, "id", *id, "token", token)
			ch, err := startChild(argv, childEnv(key, token), stdout, stderr)
			if err != nil {
				ev.report("error", fmt.Sprintf("cannot run %s: %v", argv[0], err), "error", oneLine(err), "command", argv[0])
				status = exitNoExec
				cancel(errCommandExited)
				return
			}
			select {
			case <-ch.done:
				status = ch.status()
				ev.report("command_exited", fmt.Sprintf("%s exited with status %d; resigning", argv[0], status),
					"key", key, "command", argv[0], "status", status)
				cancel(errCommandExited)
			case <-lctx.Done():
				ev.report("stopped_leading", fmt.Sprintf("leadership of %s ended; stopping %s", key, argv[0]),
					"key", key, "id", *id, "token", token)
				ch.stop(grace.d)
				ev.routine("command_exited", fmt.Sprintf("%s exited with status %d", argv[0], ch.status()),
					"key", key, "command", argv[0], "status", ch.status())
			}
		},
		OnNewLeader: func(leader string) {
			if leader != *id {
				ev.report("leader", fmt.Sprintf("%s is led by %s", key, leader), "key", key, "leader", leader)
			}
		},
	})
	switch cause := context.Cause(runCtx); {
	case errors.Is(cause, errCommandExited):
		return status
	case errors.Is(cause, errInterrupted):
		return exitOK
	case err != nil:
		return ev.failed(explain(err))
	}
	return exitOK
}
