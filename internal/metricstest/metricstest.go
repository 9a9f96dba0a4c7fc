// Package metricstest drives leases, a dlock client and an election
// through a scripted sequence against an embedded nats-server, for the
// tests of the natskvlease.Metrics adapters: each adapter's numbers are
// checked against the events the script produced.
package metricstest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

// TTL is the leases' TTL in the script: long enough that no renewal of
// its own falls within the script, on a loaded machine too.
const TTL = 30 * time.Second

// Keys used by the script.
const (
	LeaseKey    = "job"
	LockKey     = "reports.daily"
	ElectionKey = "scheduler"
)

const waitTimeout = 10 * time.Second

// Tee is a natskvlease.Metrics that keeps every event and passes it on
// to Next.
type Tee struct {
	Next natskvlease.Metrics

	mu     sync.Mutex
	events []natskvlease.Event
}

// Record implements natskvlease.Metrics.
func (t *Tee) Record(e natskvlease.Event) {
	t.mu.Lock()
	t.events = append(t.events, e)
	t.mu.Unlock()
	t.Next.Record(e)
}

// Events returns the events recorded so far.
func (t *Tee) Events() []natskvlease.Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]natskvlease.Event(nil), t.events...)
}

// Totals are what an adapter should show after a sequence of events.
type Totals struct {
	Ops          map[[2]string]int // by op and result
	OpDurations  map[string]int    // observations by op
	OpSeconds    map[string]float64
	Acquisitions int
	Releases     int
	Losses       map[natskvlease.LossCause]int
	Held         int
	Renewals     int // renewal margin observations
	Handoffs     int
	LeaderChange int
	Terms        int
	TermSeconds  float64
}

// Count adds events up.
func Count(events []natskvlease.Event) Totals {
	t := Totals{
		Ops:         map[[2]string]int{},
		OpDurations: map[string]int{},
		OpSeconds:   map[string]float64{},
		Losses:      map[natskvlease.LossCause]int{},
	}
	for _, e := range events {
		switch e.Kind {
		case natskvlease.EventOperation:
			t.Ops[[2]string{e.Op, e.Result}]++
			t.OpDurations[e.Op]++
			t.OpSeconds[e.Op] += e.Duration.Seconds()
		case natskvlease.EventAcquired:
			t.Acquisitions++
			t.Held++
		case natskvlease.EventRenewed:
			t.Renewals++
		case natskvlease.EventLost:
			t.Losses[e.Cause]++
			t.Held--
		case natskvlease.EventReleased:
			t.Releases++
			t.Held--
		case natskvlease.EventHandoff:
			t.Handoffs++
		case natskvlease.EventLeaderChanged:
			t.LeaderChange++
		case natskvlease.EventTermEnded:
			t.Terms++
			t.TermSeconds += e.Duration.Seconds()
		}
	}
	return t
}

// Run reports to m, on a new embedded server: a lease acquired and
// renewed, an acquire refused, a handoff to a waiter (AcquireWait woken
// by the holder's Release through its watch), a loss by takeover (a
// foreign write, then Renew), a dlock Lock and Unlock, and an election
// term (a leader change seen, then the term ended by Run's context). It
// checks that each step happened and returns the events m was given.
func Run(t *testing.T, m natskvlease.Metrics) []natskvlease.Event {
	t.Helper()
	tee := &Tee{Next: m}
	srv := natstest.Start(t)
	ctx := natstest.Context(t)

	// Two leases on one key, as two processes would have them.
	_, jsA := srv.JetStream()
	kvA, err := natskvlease.NewKVHelper(jsA, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "metrics", TTL: TTL})
	if err != nil {
		t.Fatal(err)
	}
	_, jsB := srv.JetStream()
	kvB, err := jsB.KeyValue(ctx, "metrics")
	if err != nil {
		t.Fatal(err)
	}
	a := natskvlease.NewLease(kvA, natskvlease.LeaseConfig{Key: LeaseKey, Value: []byte("a"), Metrics: tee})
	b := natskvlease.NewLease(natskvlease.BindJetStream(kvB, jsB), natskvlease.LeaseConfig{Key: LeaseKey, Value: []byte("b"), Metrics: tee})

	if ok, err := a.Acquire(ctx); !ok || err != nil {
		t.Fatalf("a.Acquire = %v, %v", ok, err)
	}
	if ok, err := a.Renew(ctx); !ok || err != nil {
		t.Fatalf("a.Renew = %v, %v", ok, err)
	}
	if ok, err := b.Acquire(ctx); ok || err != nil {
		t.Fatalf("b.Acquire of a held key = %v, %v", ok, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- b.AcquireWait(ctx) }()
	// b, first in the queue, watches the key.
	natstest.Eventually(t, waitTimeout, "b's watch", func() bool { return consumers(t, jsA, "metrics") == 1 })
	if err := a.Release(ctx); err != nil {
		t.Fatalf("a.Release: %v", err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("b.AcquireWait: %v", err)
	}
	if _, err := kvA.Put(ctx, LeaseKey, []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Renew(ctx); ok || err != nil {
		t.Fatalf("b.Renew after a takeover = %v, %v", ok, err)
	}

	// A lock taken and given back.
	_, jsL := srv.JetStream()
	locks, err := dlock.New(ctx, jsL, dlock.WithTTL(TTL), dlock.WithMetrics(tee))
	if err != nil {
		t.Fatal(err)
	}
	lock, err := locks.Lock(ctx, LockKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := locks.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// One term of an election: lead until this candidate has seen itself
	// become leader, then end Run.
	_, jsE := srv.JetStream()
	e, err := leadelect.New(jsE, leadelect.Config{Key: ElectionKey, ID: "node-1", TTL: TTL, Metrics: tee})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	seen := make(chan struct{})
	var once sync.Once
	err = e.Run(runCtx, leadelect.Callbacks{
		OnNewLeader: func(id string) {
			if id == "node-1" {
				once.Do(func() { close(seen) })
			}
		},
		OnStartedLeading: func(ctx context.Context) {
			select {
			case <-seen:
				cancel()
			case <-ctx.Done():
			}
			<-ctx.Done()
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	select {
	case <-seen:
	default:
		t.Fatal("the candidate never saw itself lead")
	}

	events := tee.Events()
	got := Count(events)
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"handoffs", got.Handoffs, 1},
		{"losses by takeover", got.Losses[natskvlease.CauseTakenOver], 1},
		{"refused acquires", got.Ops[[2]string{natskvlease.OpAcquire, natskvlease.ResultTaken}], 2},
		{"terms", got.Terms, 1},
		{"leader changes", got.LeaderChange, 1},
		{"held at the end", got.Held, 0},
	} {
		if c.got != c.want {
			t.Errorf("script: %s = %d, want %d", c.what, c.got, c.want)
		}
	}
	if got.Renewals < 1 || got.Releases < 3 || got.Acquisitions < 4 {
		t.Errorf("script: %d renewals, %d releases, %d acquisitions; want at least 1, 3, 4", got.Renewals, got.Releases, got.Acquisitions)
	}
	return events
}

// consumers counts the consumers of bucket's stream: a waiter's watch
// (of the ticket ahead of its own, or, once first, of the key) is one.
func consumers(t *testing.T, js jetstream.JetStream, bucket string) int {
	t.Helper()
	return natstest.Consumers(t, js, bucket)
}
