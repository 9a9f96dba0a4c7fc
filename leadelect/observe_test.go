package leadelect_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

// waitFor reads changes until one names id ("" for a vacancy) and
// returns it, failing on a closed channel or after waitTimeout.
func waitFor(t *testing.T, ch <-chan leadelect.LeaderInfo, id string) leadelect.LeaderInfo {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case info, ok := <-ch:
			if !ok {
				t.Fatalf("Observe channel closed while waiting for %q", id)
			}
			if info.ID == id {
				return info
			}
		case <-timeout:
			t.Fatalf("no change to %q within %v", id, waitTimeout)
		}
	}
}

// collect returns the next n changes.
func collect(t *testing.T, ch <-chan leadelect.LeaderInfo, n int) []leadelect.LeaderInfo {
	t.Helper()
	var got []leadelect.LeaderInfo
	timeout := time.After(waitTimeout)
	for len(got) < n {
		select {
		case info, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %v", got)
			}
			got = append(got, info)
		case <-timeout:
			t.Fatalf("got %d changes within %v, want %d: %+v", len(got), waitTimeout, n, got)
		}
	}
	return got
}

// TestObserveReportsEveryChange drives an election through leader a,
// vacancy, leader b, vacancy (b resigns alone), b again, and checks that
// a non-candidate Observer and an Election that never runs both report
// exactly that sequence, with growing tokens.
func TestObserveReportsEveryChange(t *testing.T) {
	v := newEnv(t)
	ea, _ := v.candidate(v.config("a"))
	eb, _ := v.candidate(v.config("b"))
	idle, _ := v.candidate(v.config("idle"))
	if _, err := idle.Leader(natstest.Context(t)); !errors.Is(err, leadelect.ErrNoLeader) { // creates the bucket
		t.Fatalf("Leader on a new bucket: %v, want ErrNoLeader", err)
	}
	ctx := natstest.Context(t)
	chans := map[string]<-chan leadelect.LeaderInfo{
		"Observer":         v.observer().Observe(ctx),
		"Election.Observe": idle.Observe(ctx),
	}
	for name, ch := range chans {
		if got := collect(t, ch, 1)[0]; !got.Vacant() {
			t.Fatalf("%s: first value %+v, want the current vacancy", name, got)
		}
	}
	expect := func(ids ...string) []leadelect.LeaderInfo {
		t.Helper()
		var last []leadelect.LeaderInfo
		for name, ch := range chans {
			got := collect(t, ch, len(ids))
			for i, info := range got {
				if info.ID != ids[i] {
					t.Fatalf("%s: got %+v, want IDs %q", name, got, ids)
				}
			}
			last = got
		}
		return last
	}

	a := newArena(t)
	ra := run(t, ea, a.callbacks("a"))
	ta := a.next()
	gotA := expect("a")[0]
	_ = ra.stop()
	expect("")
	rb := run(t, eb, a.callbacks("b"))
	tb := a.next()
	gotB := expect("b")[0]
	if err := eb.Resign(natstest.Context(t)); err != nil {
		t.Fatal(err)
	}
	tb2 := a.next() // alone: b leads again after a TTL
	got := expect("", "b")
	_ = rb.stop()
	expect("")

	if gotA.Token != ta.token || gotB.Token != tb.token || got[1].Token != tb2.token {
		t.Fatalf("observed tokens %d, %d, %d; terms had %d, %d, %d", gotA.Token, gotB.Token, got[1].Token, ta.token, tb.token, tb2.token)
	}
	if !(ta.token < tb.token && tb.token < tb2.token) {
		t.Fatalf("tokens not increasing: %d, %d, %d", ta.token, tb.token, tb2.token)
	}
	if got[0].Revision <= gotB.Revision {
		t.Fatalf("vacancy revision %d not after b's %d", got[0].Revision, gotB.Revision)
	}
}

func TestObserverWaitsForBucket(t *testing.T) {
	v := newEnv(t)
	ctx := natstest.Context(t)
	ch := v.observer().Observe(ctx)
	if first := collect(t, ch, 1)[0]; !first.Vacant() {
		t.Fatalf("first value %+v, want a vacancy (no bucket yet)", first)
	}
	if _, err := v.observer().Leader(ctx); !errors.Is(err, leadelect.ErrNoLeader) {
		t.Fatalf("Leader with no bucket: %v, want ErrNoLeader", err)
	}
	e, _ := v.candidate(v.config("late"))
	a := newArena(t)
	run(t, e, a.callbacks("late"))
	a.next()
	info := waitFor(t, ch, "late")
	if info.Token == 0 {
		t.Fatalf("observed %+v", info)
	}
}

func TestObserveClosesWhenContextEnds(t *testing.T) {
	v := newEnv(t)
	e, _ := v.candidate(v.config("a"))
	ctx, cancel := context.WithCancel(context.Background())
	ch := e.Observe(ctx)
	collect(t, ch, 1)
	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(waitTimeout):
		t.Fatal("channel not closed after cancel")
	}
}

func TestLeaderRefusesForeignValue(t *testing.T) {
	v := newEnv(t)
	e, _ := v.candidate(v.config("a"))
	if _, err := e.Leader(natstest.Context(t)); !errors.Is(err, leadelect.ErrNoLeader) {
		t.Fatal(err)
	}
	_, js := v.srv.JetStream()
	kv, err := js.KeyValue(natstest.Context(t), v.bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(natstest.Context(t), v.key, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Leader(natstest.Context(t)); !errors.Is(err, leadelect.ErrNotIdentity) {
		t.Fatalf("Leader over a foreign value: %v, want ErrNotIdentity", err)
	}
}

// TestCancelWhileAcquiringLeavesNoValue cancels Run just as it acquires,
// many times: an acquisition whose answer is cut off by the cancel must
// not leave the key held (until TTL) by a candidate that has gone.
func TestCancelWhileAcquiringLeavesNoValue(t *testing.T) {
	v := newEnv(t)
	_, js := v.srv.JetStream()
	for i := range 30 {
		cfg := v.slowPollConfig("a")
		cfg.Key = fmt.Sprintf("k%d", i)
		e, err := leadelect.New(js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ch := e.Observe(ctx)
		waitFor(t, ch, "")
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- e.Run(runCtx, leadelect.Callbacks{}) }()
		waitFor(t, ch, "a") // the first write is stored; its answer may not be in yet
		stop()
		<-done
		start := time.Now()
		waitFor(t, ch, "")
		took := time.Since(start)
		cancel()
		if took > handoffMax {
			t.Fatalf("round %d: key vacated %v after Run returned, want < %v", i, took, handoffMax)
		}
	}
}
