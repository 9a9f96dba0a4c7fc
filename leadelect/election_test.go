package leadelect_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/faultproxy"
	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

func TestSingleCandidateLeadsAndReleases(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	e, _ := v.candidate(v.config("node-1"))
	newLeaders := make(chan string, 10)
	cb := a.callbacks("node-1")
	cb.OnNewLeader = func(id string) { newLeaders <- id }
	r := run(t, e, cb)

	tm := a.next()
	if !e.IsLeader() || e.Token() != tm.token || tm.token == 0 {
		t.Fatalf("IsLeader=%v Token=%d, term token %d", e.IsLeader(), e.Token(), tm.token)
	}
	select {
	case id := <-newLeaders:
		if id != "node-1" {
			t.Fatalf("OnNewLeader(%q), want node-1", id)
		}
	case <-time.After(waitTimeout):
		t.Fatal("OnNewLeader not called")
	}
	info := leaderIs(t, e, "node-1")
	if info.Token != tm.token || info.Nonce == "" || info.Since.IsZero() {
		t.Fatalf("Leader = %+v, want token %d, a nonce and a start", info, tm.token)
	}

	if err := r.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if tm.ctx.Err() == nil || e.IsLeader() || e.Token() != 0 || a.stops("node-1") != 1 {
		t.Fatalf("after Run: ctx err %v, IsLeader %v, Token %d, OnStoppedLeading calls %d",
			tm.ctx.Err(), e.IsLeader(), e.Token(), a.stops("node-1"))
	}
	if _, err := e.Leader(natstest.Context(t)); !errors.Is(err, leadelect.ErrNoLeader) {
		t.Fatalf("Leader after release: %v, want ErrNoLeader", err)
	}
}

func TestResignHandsOver(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	ea, _ := v.candidate(v.slowPollConfig("a"))
	eb, _ := v.candidate(v.slowPollConfig("b"))
	run(t, ea, a.callbacks("a"))
	first := a.next()
	run(t, eb, a.callbacks("b"))
	leaders := map[string]*leadelect.Election{"a": ea, "b": eb}

	// Hand over back and forth: each time the other takes over at once,
	// and the resigned one does not take it back.
	var figures []time.Duration
	cur := first
	for range 4 {
		start := time.Now()
		if err := leaders[cur.name].Resign(natstest.Context(t)); err != nil {
			t.Fatalf("Resign by %s: %v", cur.name, err)
		}
		resigned := time.Since(start)
		next := a.next()
		took := next.at.Sub(start)
		figures = append(figures, took)
		t.Logf("Resign by %s returned after %v; %s led %v after the call", cur.name, resigned, next.name, took)
		if next.name == cur.name {
			t.Fatalf("%s took leadership back after resigning", cur.name)
		}
		if took > handoffMax {
			t.Fatalf("handoff took %v, want < %v", took, handoffMax)
		}
		if leaders[cur.name].IsLeader() {
			t.Fatalf("%s still IsLeader after resigning", cur.name)
		}
		cur = next
	}
	slices.Sort(figures)
	t.Logf("Resign handoffs: min %v, median %v, max %v", figures[0], figures[len(figures)/2], figures[len(figures)-1])
	if err := leaders[other(cur.name)].Resign(natstest.Context(t)); !errors.Is(err, leadelect.ErrNotLeader) {
		t.Fatalf("Resign by the follower: %v, want ErrNotLeader", err)
	}
}

func other(name string) string {
	if name == "a" {
		return "b"
	}
	return "a"
}

func TestResignAloneLeadsAgainAfterTTL(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	e, _ := v.candidate(v.config("solo"))
	obs := v.observer().Observe(natstest.Context(t))
	run(t, e, a.callbacks("solo"))
	first := a.next()
	waitFor(t, obs, "solo")

	start := time.Now()
	if err := e.Resign(natstest.Context(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, obs, "")
	again := a.next()
	gap := again.at.Sub(start)
	t.Logf("alone, leads again %v after resigning (TTL %v)", gap, testTTL)
	if gap < testTTL*9/10 || gap > testTTL+time.Second {
		t.Fatalf("led again after %v, want about one TTL (%v)", gap, testTTL)
	}
	if again.token <= first.token {
		t.Fatalf("token %d after %d", again.token, first.token)
	}
}

func TestResignFromLeaderWork(t *testing.T) {
	v := newEnv(t)
	ea, _ := v.candidate(v.config("a"))
	eb, _ := v.candidate(v.config("b"))
	resigned := make(chan error, 1)
	var once atomic.Bool
	run(t, ea, leadelect.Callbacks{OnStartedLeading: func(ctx context.Context) {
		if once.CompareAndSwap(false, true) {
			resigned <- ea.Resign(ctx)
		}
		<-ctx.Done()
	}})
	select {
	case err := <-resigned:
		if err != nil {
			t.Fatalf("Resign from leader work: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Resign from leader work did not return")
	}
	a := newArena(t)
	run(t, eb, a.callbacks("b"))
	if tm := a.next(); tm.name != "b" {
		t.Fatalf("%s leads", tm.name)
	}
}

func TestCancelReleasesFast(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	ea, _ := v.candidate(v.slowPollConfig("a"))
	eb, _ := v.candidate(v.slowPollConfig("b"))
	ra := run(t, ea, a.callbacks("a"))
	if tm := a.next(); tm.name != "a" {
		t.Fatalf("%s leads first", tm.name)
	}
	run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a") // b campaigns against a settled leader

	start := time.Now()
	if err := ra.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	next := a.next()
	took := next.at.Sub(start)
	t.Logf("cancel of the leader's Run: %s leads %v later", next.name, took)
	if next.name != "b" || took > handoffMax {
		t.Fatalf("%s led after %v, want b within %v", next.name, took, handoffMax)
	}
}

func TestKeepOnCancelKeepsKeyUntilTTL(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	cfg := v.config("a")
	cfg.KeepOnCancel = true
	ea, _ := v.candidate(cfg)
	eb, _ := v.candidate(v.config("b"))
	ra := run(t, ea, a.callbacks("a"))
	first := a.next()
	run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a")

	start := time.Now()
	if err := ra.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if ea.IsLeader() {
		t.Fatal("IsLeader after Run returned")
	}
	if info, err := eb.Leader(natstest.Context(t)); err != nil || info.ID != "a" || info.Token != first.token {
		t.Fatalf("Leader after a kept the key: %+v, %v", info, err)
	}
	next := a.next()
	took := next.at.Sub(start)
	t.Logf("KeepOnCancel: b leads %v after a's Run ended (TTL %v)", took, testTTL)
	if next.name != "b" || took < testTTL/2 || took > testTTL+time.Second {
		t.Fatalf("%s led after %v, want b after about one TTL", next.name, took)
	}
}

func TestResignReleasesKeptKey(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	cfg := v.slowPollConfig("a")
	cfg.KeepOnCancel = true
	ea, _ := v.candidate(cfg)
	eb, _ := v.candidate(v.slowPollConfig("b"))
	ra := run(t, ea, a.callbacks("a"))
	a.next()
	if err := ra.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a")
	start := time.Now()
	if err := ea.Resign(natstest.Context(t)); err != nil {
		t.Fatalf("Resign after Run: %v", err)
	}
	next := a.next()
	if took := next.at.Sub(start); next.name != "b" || took > handoffMax {
		t.Fatalf("%s led %v after Resign, want b within %v", next.name, took, handoffMax)
	}
	if err := ea.Resign(natstest.Context(t)); !errors.Is(err, leadelect.ErrNotLeader) {
		t.Fatalf("second Resign: %v, want ErrNotLeader", err)
	}
}

func TestLeaderCrashHandsOverWithinTTL(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	ea, nca := v.candidate(v.config("a"))
	eb, _ := v.candidate(v.config("b"))
	ra := run(t, ea, a.callbacks("a"))
	crashed := a.next()
	run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a")

	start := time.Now()
	nca.Close() // the leader's process dies, as far as the server knows
	next := a.next()
	took := next.at.Sub(start)
	t.Logf("leader crash: b leads %v after a's connection closed (TTL %v)", took, testTTL)
	if next.name != "b" || took > testTTL+time.Second {
		t.Fatalf("%s led after %v, want b within TTL + 1s", next.name, took)
	}
	if crashed.ctx.Err() == nil { // the arena checked it was cancelled before b started
		t.Fatal("crashed leader's context not cancelled")
	}
	if err := ra.wait(); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("crashed candidate's Run: %v, want ErrConnectionClosed", err)
	}
}

func TestSameIDNeverBothLead(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	e1, _ := v.candidate(v.config("twin"))
	e2, _ := v.candidate(v.config("twin"))
	run(t, e1, a.callbacks("twin-1"))
	first := a.next()
	run(t, e2, a.callbacks("twin-2"))
	infoA := leaderIs(t, e2, "twin")
	if e2.IsLeader() {
		t.Fatal("both twins lead")
	}
	leader := map[string]*leadelect.Election{"twin-1": e1, "twin-2": e2}[first.name]
	if err := leader.Resign(natstest.Context(t)); err != nil {
		t.Fatal(err)
	}
	next := a.next()
	if next.name == first.name {
		t.Fatalf("%s led again; its twin should have", next.name)
	}
	infoB := leaderIs(t, e1, "twin")
	if infoB.Nonce == infoA.Nonce || infoB.Token <= infoA.Token {
		t.Fatalf("twins' terms: %+v then %+v; want different nonces, growing tokens", infoA, infoB)
	}
}

// TestManyCandidatesNeverOverlap hands leadership around five candidates
// by Resign, by restarting the leader's Run, and by crashing the leader
// (closing its connection; a spare candidate joins in its place), while
// a monitor samples every IsLeader/Token: at no instant may two
// candidates lead, and the arena checks each term's start.
func TestManyCandidatesNeverOverlap(t *testing.T) {
	const n, spares, rounds = 5, 3, 30
	v := newEnv(t)
	a := newArena(t)
	es := make([]*leadelect.Election, n+spares)
	ncs := make([]*nats.Conn, n+spares)
	rs := make([]*running, n+spares)
	byName := map[string]int{}
	for i := range es {
		name := fmt.Sprintf("c%d", i)
		es[i], ncs[i] = v.candidate(v.config(name))
		byName[name] = i
		if i < n {
			rs[i] = run(t, es[i], a.callbacks(name))
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	var overlaps, samples atomic.Int64
	monDone := make(chan struct{})
	go func() { defer close(monDone); monitor(ctx, es, &overlaps, &samples) }()

	var fast, crashes []time.Duration
	spare := n
	cur := a.next()
	for round := range rounds {
		i := byName[cur.name]
		start := time.Now()
		switch {
		case round%10 == 9:
			ncs[i].Close()
			rs[spare] = run(t, es[spare], a.callbacks(fmt.Sprintf("c%d", spare)))
			spare++
		case round%2 == 0:
			if err := es[i].Resign(natstest.Context(t)); err != nil {
				t.Fatalf("Resign: %v", err)
			}
		default:
			_ = rs[i].stop()
			rs[i] = run(t, es[i], a.callbacks(cur.name))
		}
		next := a.next()
		took := next.at.Sub(start)
		if round%10 == 9 {
			crashes = append(crashes, took)
			if took > testTTL+time.Second {
				t.Fatalf("after a crash %s led %v later, want within TTL + 1s", next.name, took)
			}
		} else {
			fast = append(fast, took)
		}
		cur = next
	}
	stop()
	<-monDone
	slices.Sort(fast)
	t.Logf("%d Resign/cancel handoffs among %d candidates: min %v, median %v, max %v; crash handoffs %v; %d monitor samples",
		len(fast), n, fast[0], fast[len(fast)/2], fast[len(fast)-1], crashes, samples.Load())
	if overlaps.Load() != 0 {
		t.Fatalf("%d samples saw two leaders at once", overlaps.Load())
	}
}

// monitor samples every candidate's Token (0 unless leading). Candidates
// i and j seen leading in one pass are an overlap only if i is seen
// again, after j, in the same term: i then led throughout j's sample.
func monitor(ctx context.Context, es []*leadelect.Election, overlaps, samples *atomic.Int64) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	toks := make([]uint64, len(es))
	for ctx.Err() == nil {
		for i, e := range es {
			toks[i] = e.Token()
		}
		for i := range toks {
			for j := i + 1; j < len(toks); j++ {
				if toks[i] != 0 && toks[j] != 0 && es[i].Token() == toks[i] {
					overlaps.Add(1)
				}
			}
		}
		samples.Add(1)
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func TestRunTwiceIsRefused(t *testing.T) {
	v := newEnv(t)
	e, _ := v.candidate(v.config("a"))
	a := newArena(t)
	run(t, e, a.callbacks("a"))
	a.next()
	if err := e.Run(natstest.Context(t), leadelect.Callbacks{}); !errors.Is(err, leadelect.ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
}

func TestKeptTermResumesWithSameToken(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	cfg := v.config("a")
	cfg.KeepOnCancel = true
	e, _ := v.candidate(cfg)
	r := run(t, e, a.callbacks("a"))
	first := a.next()
	_ = r.stop()
	// Another arena: the resumed term has the same token, by design.
	b := newArena(t)
	run(t, e, b.callbacks("a"))
	again := b.next()
	if again.token != first.token {
		t.Fatalf("resumed term has token %d, want %d", again.token, first.token)
	}
}

// TestPartitionedLeaderStepsDownFirst cuts the leader off from the
// server without closing its connection (a partition TCP does not
// notice): its renewals time out, and its leader context must be
// cancelled, by the lease's safety deadline, before the server expires
// the key and another candidate starts leading.
func TestPartitionedLeaderStepsDownFirst(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	p := faultproxy.New(t, v.srv.NATS().Addr().String())
	nca := natstest.Connect(t, p.URL())
	jsa, err := jetstream.New(nca)
	if err != nil {
		t.Fatal(err)
	}
	ea, err := leadelect.New(jsa, v.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	eb, _ := v.candidate(v.config("b"))
	run(t, ea, a.callbacks("a"))
	cut := a.next()
	run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a")

	start := time.Now()
	p.Blackhole(true)
	<-cut.ctx.Done()
	stepped := time.Since(start)
	if ea.IsLeader() {
		t.Fatal("IsLeader after the leader context ended")
	}
	next := a.next() // the arena checks a's context ended first
	took := next.at.Sub(start)
	t.Logf("partition: a stepped down after %v, b led after %v (TTL %v)", stepped, took, testTTL)
	if next.name != "b" || took > testTTL+time.Second {
		t.Fatalf("%s led after %v, want b within TTL + 1s", next.name, took)
	}
}

// TestWaitingCandidateEndsOnClosedConnection: a candidate waiting for
// the key on a connection closed for good ends its Run within a second
// with an error wrapping nats.ErrConnectionClosed.
func TestWaitingCandidateEndsOnClosedConnection(t *testing.T) {
	v := newEnv(t)
	a := newArena(t)
	ea, _ := v.candidate(v.config("a"))
	eb, ncb := v.candidate(v.config("b"))
	run(t, ea, a.callbacks("a"))
	a.next()
	rb := run(t, eb, a.callbacks("b"))
	leaderIs(t, eb, "a")
	start := time.Now()
	ncb.Close()
	err := rb.wait()
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the waiting candidate's Run returned %v after its connection closed; want within a second", took)
	}
	if !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("waiting candidate's Run: %v, want ErrConnectionClosed", err)
	}
}

// TestCandidatesWatchOnlyWhatTheyNeed: a release reaches one waiting
// candidate's watch, not all of them. Candidates that only campaign keep
// one watch each while they wait (the first one's on the key, the
// others' on the queue ticket ahead of their own) and the leader none;
// an OnNewLeader callback adds a watch of the key to each candidate that
// has one, the leader included.
func TestCandidatesWatchOnlyWhatTheyNeed(t *testing.T) {
	for _, c := range []struct {
		name      string
		onNew     bool
		wantWatch int
	}{
		{"campaign only", false, 3},
		{"with OnNewLeader", true, 3 + 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := newEnv(t)
			a := newArena(t)
			callbacks := func(name string) leadelect.Callbacks {
				cb := a.callbacks(name)
				if c.onNew {
					cb.OnNewLeader = func(string) {}
				}
				return cb
			}
			lead, _ := v.candidate(v.slowPollConfig("leader"))
			run(t, lead, callbacks("leader"))
			a.next()
			for i := range 3 {
				e, _ := v.candidate(v.slowPollConfig(fmt.Sprintf("c%d", i)))
				run(t, e, callbacks(fmt.Sprintf("c%d", i)))
			}
			_, js := v.srv.JetStream()
			consumers := func() int { return natstest.Consumers(t, js, v.bucket) }
			natstest.Eventually(t, waitTimeout, fmt.Sprintf("%d watches", c.wantWatch), func() bool { return consumers() == c.wantWatch })
			for i := range 10 { // and no more come
				if n := consumers(); n != c.wantWatch {
					t.Fatalf("check %d: %d watches, want %d", i, n, c.wantWatch)
				}
			}
		})
	}
}
