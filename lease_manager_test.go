package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestLeaseManagerStartStop(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, time.Second)
	ctx := natstest.Context(t)
	acquired, released := make(chan struct{}, 1), make(chan struct{}, 1)
	cfg := leaseCfg("job", "m")
	cfg.Callbacks = LeaseCallbacks{
		OnAcquired: func() { acquired <- struct{}{} },
		OnReleased: func() { released <- struct{}{} },
	}
	m := NewLeaseManager(kv, cfg)
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop before Start = %v", err)
	}
	if err := m.Start(ctx); !errors.Is(err, ErrProviderStopped) {
		t.Fatalf("Start after Stop = %v; want ErrProviderStopped", err)
	}

	m = NewLeaseManager(kv, cfg)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Start = %v; want ErrAlreadyStarted", err)
	}
	select {
	case <-acquired:
	case <-time.After(5 * time.Second):
		t.Fatal("manager did not acquire a free key")
	}
	// It renews: still held after three TTLs.
	time.Sleep(3 * time.Second)
	if !m.IsHeld() {
		t.Fatal("manager lost its lease without any fault")
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if m.IsHeld() {
		t.Fatal("held after Stop")
	}
	<-released
	if _, err := kv.Get(ctx, "job"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Stop did not release the key: %v", err)
	}
	if err := m.Stop(ctx); !errors.Is(err, ErrProviderStopped) {
		t.Fatalf("second Stop = %v; want ErrProviderStopped", err)
	}
	if err := m.Start(ctx); !errors.Is(err, ErrProviderStopped) {
		t.Fatalf("Start after Stop = %v; want ErrProviderStopped", err)
	}
}

func TestLeaseManagerContextEndReleases(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	m := NewLeaseManager(kv, leaseCfg("job", "m"))
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 5*time.Second, "acquisition", m.IsHeld)
	cancel()
	natstest.Eventually(t, 5*time.Second, "release after the context ended", func() bool {
		_, err := kv.Get(context.Background(), "job")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if err := m.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// consumers counts the watchers (ordered consumers) on a bucket's stream.
func consumers(t *testing.T, js jetstream.JetStream, bucket string) int {
	t.Helper()
	return natstest.Consumers(t, js, bucket)
}

// TestLeaseManagerGracefulHandoff: a waiting manager is woken by the
// purge marker of a graceful release, not by its poll (which is seconds
// away at TTL 10s).
func TestLeaseManagerGracefulHandoff(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 10*time.Second)
	ctx := natstest.Context(t)
	const rounds = 7
	holder := NewLeaseManager(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "m0"))
	if err := holder.Start(ctx); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 5*time.Second, "first acquisition", holder.IsHeld)
	var took []time.Duration
	lastToken := holder.Token()
	for i := 1; i <= rounds; i++ {
		acquired := make(chan time.Time, 1)
		cfg := leaseCfg("job", "m"+string(rune('0'+i)))
		cfg.Callbacks.OnAcquired = func() { acquired <- time.Now() }
		waiter := NewLeaseManager(openBucket(t, srv, kv.Bucket()), cfg)
		if err := waiter.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// The waiter's watch: a holder watches nothing.
		natstest.Eventually(t, 5*time.Second, "the waiter's watch", func() bool { return consumers(t, js, kv.Bucket()) == waitingWatches })
		start := time.Now()
		if err := holder.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-acquired:
			took = append(took, at.Sub(start))
		case <-time.After(3 * time.Second):
			t.Fatalf("round %d: the waiter did not acquire after a graceful release", i)
		}
		if tok := waiter.Token(); tok <= lastToken {
			t.Fatalf("round %d: token %d after %d", i, tok, lastToken)
		} else {
			lastToken = tok
		}
		holder = waiter
	}
	if err := holder.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	slices.Sort(took)
	t.Logf("handoff after graceful release: min %v, median %v, max %v", took[0], took[len(took)/2], took[len(took)-1])
	// Speed is for the benchmarks; this only tells the watch from the
	// poll, which is at least 4s away.
	if took[len(took)-1] > 2*time.Second {
		t.Fatalf("a handoff took %v: it waited for a poll, not the watch", took[len(took)-1])
	}
}

// TestLeaseManagerSeesTakeover: a holder whose key is overwritten learns
// of the loss at its next renewal, and acquires again as soon as the key
// is deleted (purging the DEL marker first).
func TestLeaseManagerSeesTakeover(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 3*time.Second)
	ctx := natstest.Context(t)
	var lost, acquired atomic.Int32
	cfg := leaseCfg("job", "m")
	cfg.Callbacks.OnLost = func() { lost.Add(1) }
	cfg.Callbacks.OnAcquired = func() { acquired.Add(1) }
	m := NewLeaseManager(kv, cfg)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.Stop(context.Background()) }()
	natstest.Eventually(t, 5*time.Second, "acquisition", func() bool { return acquired.Load() == 1 })
	first := m.Token()
	if _, err := kv.Put(ctx, "job", []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 3*time.Second, "loss noticed at the next renewal", func() bool { return !m.IsHeld() && lost.Load() == 1 })
	if err := kv.Delete(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 3*time.Second, "re-acquisition after the delete", func() bool { return acquired.Load() == 2 && m.IsHeld() })
	if m.Token() <= first {
		t.Fatalf("token %d after %d", m.Token(), first)
	}
}

// TestLeaseManagerCrowdTakesTurns: managers of one key on one bound
// KeyValue wait on the server one at a time (one watch between them),
// and each gets the lease in turn as the others stop.
func TestLeaseManagerCrowdTakesTurns(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 10*time.Second)
	ctx := natstest.Context(t)
	holder := NewLeaseManager(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "holder"))
	if err := holder.Start(ctx); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 5*time.Second, "the holder", holder.IsHeld)
	shared := openBucket(t, srv, kv.Bucket()) // bound: from GetOrCreateBucket
	const crowd = 10
	acquired := make(chan int, crowd)
	managers := make([]*LeaseManager, crowd)
	for i := range managers {
		cfg := leaseCfg("job", fmt.Sprintf("m%d", i))
		cfg.Callbacks.OnAcquired = func() { acquired <- i }
		managers[i] = NewLeaseManager(shared, cfg)
		if err := managers[i].Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// One of the crowd's watches; a holder watches nothing.
	natstest.Eventually(t, 5*time.Second, "a waiter watching", func() bool { return consumers(t, js, kv.Bucket()) >= waitingWatches })
	for i := range 20 {
		if n := consumers(t, js, kv.Bucket()); n != waitingWatches {
			t.Fatalf("check %d: %d watches (%d waiters of one KeyValue); want those of one waiter", i, n, crowd)
		}
	}
	if err := holder.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for range crowd {
		select {
		case i := <-acquired:
			if !managers[i].IsHeld() {
				t.Fatalf("m%d: OnAcquired but not held", i)
			}
			if err := managers[i].Stop(ctx); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no manager of the crowd acquired after a release")
		}
	}
}
