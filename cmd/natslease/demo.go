package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natskvlease/natskvlease/internal/embedded"
	"github.com/natskvlease/natskvlease/leadelect"
)

const demoUsage = `Usage: natslease demo [flags]

Runs a leader election among N candidates, each with its own connection,
against a nats-server embedded in natslease (or --server). It kills the
leader (closes its connection without resigning) to show the failover
after the TTL, then has the new leader resign to show a graceful handoff
within milliseconds, and prints the timeline: milliseconds since start,
who leads, and the term's fencing token. It ends by itself in a few
seconds.

Examples:
  go run ./cmd/natslease demo
  natslease demo -n 5 --ttl 3s
  natslease demo --server nats://127.0.0.1:4222   # against a running server
`

// demoKey is the election the demo runs, in its own bucket.
const (
	demoBucket = "natslease_demo"
	demoKey    = "demo"
)

type demoTerm struct {
	who   int
	token uint64
	at    time.Time
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newCommand("demo", demoUsage)
	var cf connFlags
	cf.register(c.fs, "", "NATS server `URL`; empty starts an embedded nats-server")
	n := c.fs.Int("candidates", 3, "`number` of candidates (at least 2)")
	c.fs.IntVar(n, "n", 3, "short for --candidates")
	ttlFlag := c.durationVar("ttl", 2*time.Second, "leadership TTL, a `duration` (at least 1s): the failover takes about this long")
	p, ok, status := c.parseOrExit(args, stdout, stderr)
	if !ok {
		return status
	}
	ttl := &ttlFlag.d
	switch {
	case len(p.args) != 0 || p.dashes:
		return usageError(stderr, "demo", "unexpected arguments %q", append(p.args, p.command...))
	case *n < 2:
		return usageError(stderr, "demo", "--candidates %d: the demo needs at least 2 candidates", *n)
	}
	if err := atLeast("ttl", ttlFlag, leadelect.MinTTL); err != nil {
		return usageError(stderr, "demo", "%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10**ttl+30*time.Second)
	defer cancel()

	start := time.Now()
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(stdout, "%8.1fms  %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
	}

	if cf.server == "" {
		url, stop, err := embedded.Start()
		if err != nil {
			return fail(stderr, err)
		}
		defer stop()
		cf.server = url
		say("embedded nats-server with JetStream listening on %s", url)
	}

	// Candidates, each on its own connection.
	names := make([]string, *n)
	conns := make([]*nats.Conn, *n)
	elections := make([]*leadelect.Election, *n)
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	for i := range *n {
		names[i] = fmt.Sprintf("candidate-%d", i+1)
		nc, js, err := cf.connect(ctx)
		if err != nil {
			return fail(stderr, err)
		}
		conns[i] = nc
		e, err := leadelect.New(js, leadelect.Config{Bucket: demoBucket, Key: demoKey, ID: names[i], TTL: *ttl})
		if err != nil {
			return fail(stderr, explain(err))
		}
		elections[i] = e
	}

	terms := make(chan demoTerm, 4**n)
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	runErrs := make([]error, *n)
	for i, e := range elections {
		wg.Go(func() {
			runErrs[i] = e.Run(runCtx, leadelect.Callbacks{
				OnStartedLeading: func(lctx context.Context) {
					token, _ := leadelect.TokenFromContext(lctx)
					say("%s leads (token %d)", names[i], token)
					terms <- demoTerm{who: i, token: token, at: time.Now()}
					<-lctx.Done()
					why := ""
					if conns[i].IsClosed() {
						why = " (its connection is closed)"
					}
					say("%s stops leading%s", names[i], why)
				},
			})
		})
	}
	say("%d candidates campaign for %s/%s with TTL %v", *n, demoBucket, demoKey, *ttl)

	code := func() int {
		next := func(what string, limit time.Duration) (demoTerm, bool) {
			select {
			case t := <-terms:
				return t, true
			case <-time.After(limit):
				fmt.Fprintf(stderr, "natslease: demo: no %s within %v\n", what, limit)
			case <-ctx.Done():
				fmt.Fprintf(stderr, "natslease: demo: %v\n", ctx.Err())
			}
			return demoTerm{}, false
		}
		first, ok := next("leader", 10*time.Second)
		if !ok {
			return exitError
		}

		say("killing %s: closing its connection without resigning; its key expires within the TTL", names[first.who])
		killed := time.Now()
		conns[first.who].Close()
		second, ok := next("failover", 3**ttl+5*time.Second)
		if !ok {
			return exitError
		}
		say("failover: %s took over %v after the kill (token %d > %d)",
			names[second.who], second.at.Sub(killed).Round(time.Millisecond), second.token, first.token)

		say("%s resigns: graceful handoff", names[second.who])
		resigned := time.Now()
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		err := elections[second.who].Resign(rctx)
		rcancel()
		if err != nil {
			fmt.Fprintf(stderr, "natslease: demo: resign: %v\n", err)
			return exitError
		}
		third, ok := next("handoff", 3**ttl+5*time.Second)
		if !ok {
			return exitError
		}
		say("handoff: %s took over %v after the resignation (token %d > %d)",
			names[third.who], third.at.Sub(resigned).Round(time.Millisecond), third.token, second.token)
		return exitOK
	}()

	if code == exitOK {
		say("stopping the candidates (the leader resigns)")
	}
	stopAll()
	wg.Wait()
	for i, err := range runErrs {
		if err != nil && code == exitOK && !errors.Is(err, context.Canceled) && !errors.Is(err, nats.ErrConnectionClosed) {
			fmt.Fprintf(stderr, "natslease: demo: %s: %v\n", names[i], err)
		}
	}
	if code == exitOK {
		say("all candidates stopped; done")
	}
	return code
}
