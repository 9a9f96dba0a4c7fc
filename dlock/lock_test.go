package dlock_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/faultproxy"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestLockUnlock(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	l := mustLock(t, c, "jobs.a")
	if l.Key() != "jobs.a" || l.Token() == 0 || l.Owner() == "" {
		t.Fatalf("Key %q Token %d Owner %q", l.Key(), l.Token(), l.Owner())
	}
	if err := l.Context().Err(); err != nil {
		t.Fatalf("Context of a held lock: %v", err)
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if !errors.Is(l.Context().Err(), context.Canceled) || !errors.Is(context.Cause(l.Context()), context.Canceled) {
		t.Fatalf("Context after Unlock: err %v cause %v", l.Context().Err(), context.Cause(l.Context()))
	}
	if isClosed(l.Lost()) {
		t.Fatal("Lost closed by Unlock")
	}
	// A second Unlock, like a second Lease.Release, says nothing was held.
	if err := l.Unlock(natstest.Context(t)); !errors.Is(err, natskvlease.ErrLeaseNotHeld) || errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("second Unlock: %v, want ErrLeaseNotHeld", err)
	}
	l2 := mustLock(t, c, "jobs.a")
	if l2.Token() <= l.Token() {
		t.Fatalf("token went from %d to %d", l.Token(), l2.Token())
	}
	if err := l2.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// Many contenders, each on its own connection, never hold the lock at
// once, and tokens grow in the order the lock is taken.
func TestNoOverlap(t *testing.T) {
	const workers, rounds = 8, 20
	e := newEnv(t, 2*time.Second)
	var (
		inside    atomic.Int32
		mu        sync.Mutex
		lastToken uint64
		held      int
	)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		c, _ := e.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := natstest.Context(t)
			for r := range rounds {
				l, err := c.Lock(ctx, "shared")
				if err != nil {
					errs <- err
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("worker %d round %d: %d holders inside", w, r, n)
				}
				mu.Lock()
				if l.Token() <= lastToken {
					t.Errorf("token %d after %d", l.Token(), lastToken)
				}
				lastToken = l.Token()
				held++
				mu.Unlock()
				runtime.Gosched()
				if l.Context().Err() != nil {
					t.Errorf("lock lost inside the critical section: %v", context.Cause(l.Context()))
				}
				inside.Add(-1)
				if err := l.Unlock(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if held != workers*rounds {
		t.Fatalf("%d holdings, want %d", held, workers*rounds)
	}
}

// A waiter blocked in Lock is handed the lock within milliseconds of
// Unlock: the key's watch wakes it. With a 10s TTL the fallback poll runs
// every 4-6s, so only the watch can explain a fast handoff.
func TestHandoffLatency(t *testing.T) {
	const rounds = 10
	e := newEnv(t, 10*time.Second)
	holder, _ := e.client()
	waiter, _ := e.client()
	var fromCall, fromReturn []time.Duration
	for range rounds {
		natstest.Eventually(t, 10*time.Second, "no watch consumers left", func() bool { return e.consumers() == 0 })
		l := mustLock(t, holder, "handoff")
		natstest.Eventually(t, 10*time.Second, "no watch consumers left", func() bool { return e.consumers() == 0 })
		got := make(chan time.Time, 1)
		var wl *dlock.Lock
		go func() {
			var err error
			wl, err = waiter.Lock(natstest.Context(t), "handoff")
			if err != nil {
				t.Errorf("waiter Lock: %v", err)
			}
			got <- time.Now()
		}()
		natstest.Eventually(t, 10*time.Second, "the waiter's watch", func() bool { return e.consumers() == waitingWatches })
		called := time.Now()
		if err := l.Unlock(natstest.Context(t)); err != nil {
			t.Fatalf("Unlock: %v", err)
		}
		returned := time.Now()
		at := <-got
		if wl == nil {
			t.FailNow()
		}
		fromCall = append(fromCall, at.Sub(called))
		fromReturn = append(fromReturn, max(at.Sub(returned), 0))
		if err := wl.Unlock(natstest.Context(t)); err != nil {
			t.Fatalf("waiter Unlock: %v", err)
		}
	}
	t.Logf("handoff from Unlock return: median %v, max %v; from Unlock call: median %v, max %v; all from return: %v",
		median(fromReturn), slicesMax(fromReturn), median(fromCall), slicesMax(fromCall), fromReturn)
	// How fast is for the benchmarks; this tells the watch from the poll.
	if m := slicesMax(fromCall); m >= 2*time.Second {
		t.Errorf("slowest handoff %v, want well under the poll interval", m)
	}
}

func slicesMax(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// A holder whose connection dies loses the lock: its Context is
// cancelled and Lost closed before the waiter gets the lock, and the
// waiter gets it within TTL + 1s.
func TestConnectionLossCancelsBeforeHandoff(t *testing.T) {
	e := newEnv(t, time.Second)
	holder, hnc := e.client()
	waiter, _ := e.client()
	l := mustLock(t, holder, "conn")
	lostAt := make(chan time.Time, 1)
	go func() { <-l.Context().Done(); lostAt <- time.Now() }()

	type result struct {
		l                         *dlock.Lock
		at                        time.Time
		ctxDone, lostClosed, seen bool
	}
	res := make(chan result, 1)
	go func() {
		wl, err := waiter.Lock(natstest.Context(t), "conn")
		r := result{l: wl, at: time.Now(), seen: err == nil}
		// What the old holder knew when the waiter got the lock.
		r.ctxDone, r.lostClosed = l.Context().Err() != nil, isClosed(l.Lost())
		if err != nil {
			t.Errorf("waiter Lock: %v", err)
		}
		res <- r
	}()
	natstest.Eventually(t, 10*time.Second, "the waiter's watch", func() bool { return e.consumers() == waitingWatches })
	killed := time.Now()
	hnc.Close()

	var r result
	select {
	case r = <-res:
	case <-time.After(e.ttl + time.Second + 5*time.Second):
		t.Fatal("waiter did not get the lock")
	}
	if !r.seen {
		t.FailNow()
	}
	lost := <-lostAt
	t.Logf("holder's Context cancelled %v after the kill; waiter got the lock %v after the kill",
		lost.Sub(killed), r.at.Sub(killed))
	if !r.ctxDone || !r.lostClosed {
		t.Fatalf("when the waiter got the lock, old Context done=%v, Lost closed=%v", r.ctxDone, r.lostClosed)
	}
	if !lost.Before(r.at) {
		t.Fatalf("old holder's Context cancelled at %v, after the waiter got the lock at %v", lost, r.at)
	}
	if d := r.at.Sub(killed); d > e.ttl+time.Second {
		t.Fatalf("waiter got the lock %v after the kill, want within TTL + 1s", d)
	}
	if !errors.Is(context.Cause(l.Context()), dlock.ErrLockLost) {
		t.Fatalf("Context cause %v, want ErrLockLost", context.Cause(l.Context()))
	}
	if r.l.Token() <= l.Token() {
		t.Fatalf("new token %d not above old %d", r.l.Token(), l.Token())
	}
	if err := l.Unlock(natstest.Context(t)); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Unlock of a lost lock: %v, want ErrLockLost", err)
	}
	if err := r.l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// A lock held past several TTLs is renewed and stays exclusive.
func TestRenewalKeepsLock(t *testing.T) {
	e := newEnv(t, time.Second)
	c, _ := e.client()
	other, _ := e.client()
	l := mustLock(t, c, "long")
	start := time.Now()
	var rev uint64
	renewals := 0
	natstest.Eventually(t, 10*time.Second, "three renewals and 2.5 TTLs", func() bool {
		h, err := c.Holder(natstest.Context(t), "long")
		if err != nil {
			t.Fatalf("Holder: %v", err)
		}
		if h.Revision != rev {
			rev = h.Revision
			renewals++
		}
		return renewals > 3 && time.Since(start) > 5*e.ttl/2
	})
	if _, err := other.TryLock(natstest.Context(t), "long"); !errors.Is(err, dlock.ErrLocked) {
		t.Fatalf("TryLock on a renewed lock: %v, want ErrLocked", err)
	}
	if err := l.Context().Err(); err != nil || isClosed(l.Lost()) {
		t.Fatalf("renewed lock ended: %v", context.Cause(l.Context()))
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

func TestLockContextEnds(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	other, _ := e.client()
	l := mustLock(t, c, "busy")
	ctx, cancel := context.WithTimeout(natstest.Context(t), 100*time.Millisecond)
	defer cancel()
	if _, err := other.Lock(ctx, "busy"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with an expiring context: %v, want DeadlineExceeded", err)
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	// The abandoned attempt left nothing behind.
	l2, err := other.TryLock(natstest.Context(t), "busy")
	if err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	_ = l2.Unlock(natstest.Context(t))
}

func TestTryLock(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	a, _ := e.client()
	b, _ := e.client()
	l, err := a.TryLock(natstest.Context(t), "try")
	if err != nil {
		t.Fatalf("TryLock on a free key: %v", err)
	}
	_, err = b.TryLock(natstest.Context(t), "try")
	var le *dlock.LockedError
	if !errors.Is(err, dlock.ErrLocked) || !errors.As(err, &le) {
		t.Fatalf("TryLock on a held key: %v, want a *LockedError", err)
	}
	if le.Key != "try" || le.Holder.Owner != l.Owner() || le.Holder.Token != l.Token() || le.Holder.Hostname == "" || le.Holder.PID == 0 {
		t.Fatalf("LockedError %+v, want owner %s token %d", le, l.Owner(), l.Token())
	}
	t.Logf("error: %v", err)
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	l2, err := b.TryLock(natstest.Context(t), "try")
	if err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	if l2.Token() <= l.Token() {
		t.Fatalf("token went from %d to %d", l.Token(), l2.Token())
	}
	if err := l2.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// A holder whose connection stalls (requests vanish, no error) loses the
// lock at its safety deadline: its Context is cancelled before the key
// expires on the server, hence before the waiter gets the lock.
func TestStalledConnectionCancelsBeforeHandoff(t *testing.T) {
	e := newEnv(t, time.Second)
	proxy := faultproxy.New(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(e.srv.Port())))
	js, err := jetstream.New(natstest.Connect(t, proxy.URL()))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	holder, err := dlock.New(natstest.Context(t), js, dlock.WithBucket(e.bucket), dlock.WithTTL(e.ttl))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = holder.Close(context.Background()) })
	waiter, _ := e.client()
	l := mustLock(t, holder, "stall")
	lostAt := make(chan time.Time, 1)
	go func() { <-l.Context().Done(); lostAt <- time.Now() }()

	type result struct {
		l                   *dlock.Lock
		at                  time.Time
		ctxDone, lostClosed bool
	}
	res := make(chan result, 1)
	go func() {
		wl, err := waiter.Lock(natstest.Context(t), "stall")
		r := result{l: wl, at: time.Now(), ctxDone: l.Context().Err() != nil, lostClosed: isClosed(l.Lost())}
		if err != nil {
			t.Errorf("waiter Lock: %v", err)
		}
		res <- r
	}()
	natstest.Eventually(t, 10*time.Second, "the waiter's watch", func() bool { return e.consumers() == waitingWatches })
	stalled := time.Now()
	proxy.Blackhole(true)

	var r result
	select {
	case r = <-res:
	case <-time.After(e.ttl + 5*time.Second):
		t.Fatal("waiter did not get the lock")
	}
	if r.l == nil {
		t.FailNow()
	}
	lost := <-lostAt
	t.Logf("holder's Context cancelled %v after the stall; waiter got the lock %v after the stall (margin %v)",
		lost.Sub(stalled), r.at.Sub(stalled), r.at.Sub(lost))
	if !r.ctxDone || !r.lostClosed || !lost.Before(r.at) {
		t.Fatalf("when the waiter got the lock, old Context done=%v, Lost closed=%v (lost at %v, taken at %v)",
			r.ctxDone, r.lostClosed, lost, r.at)
	}
	if d := r.at.Sub(stalled); d > e.ttl+time.Second {
		t.Fatalf("waiter got the lock %v after the stall, want within TTL + 1s", d)
	}
	proxy.Blackhole(false)
	if err := r.l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if err := l.Unlock(natstest.Context(t)); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Unlock of the stalled lock: %v, want ErrLockLost", err)
	}
}

// TestLocalWaitersQueue: goroutines of one Client after one key wait on
// the server one at a time (one watch), queue in the process, and all
// get the lock in turn.
func TestLocalWaitersQueue(t *testing.T) {
	const waiters = 20
	e := newEnv(t, 5*time.Second)
	holderClient, _ := e.client()
	c, _ := e.client()
	ctx := natstest.Context(t)
	holder := mustLock(t, holderClient, "shared")
	natstest.Eventually(t, 5*time.Second, "the holder's watch gone", func() bool { return e.consumers() == 0 })

	var started sync.WaitGroup
	started.Add(waiters)
	var inside atomic.Int32
	tokens := make(chan uint64, waiters)
	errs := make(chan error, waiters)
	var wg sync.WaitGroup
	for range waiters {
		wg.Go(func() {
			started.Done()
			l, err := c.Lock(ctx, "shared")
			if err != nil {
				errs <- err
				return
			}
			if n := inside.Add(1); n != 1 {
				t.Errorf("%d holders inside", n)
			}
			tokens <- l.Token()
			inside.Add(-1)
			if err := l.Unlock(ctx); err != nil {
				errs <- err
			}
		})
	}
	started.Wait()
	natstest.Eventually(t, 5*time.Second, "a waiter watching", func() bool { return e.consumers() >= waitingWatches })
	for i := range 20 { // the others stay queued in the process
		if n := e.consumers(); n != waitingWatches {
			t.Fatalf("check %d: %d watches for %d waiters of one Client; want one waiter's %d", i, n, waiters, waitingWatches)
		}
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(tokens)
	var got []uint64
	for tok := range tokens {
		got = append(got, tok)
	}
	if len(got) != waiters {
		t.Fatalf("%d holdings, want %d", len(got), waiters)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("tokens %v: want them strictly increasing in the order taken", got)
		}
	}
}

// TestLockEndsOnClosedConnection: a Lock waiting on a connection that is
// closed for good returns within a second, with an error wrapping
// nats.ErrConnectionClosed, instead of waiting for its context.
func TestLockEndsOnClosedConnection(t *testing.T) {
	e := newEnv(t, 10*time.Second)
	holder, _ := e.client()
	ctx := natstest.Context(t)
	l, err := holder.Lock(ctx, "job")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Unlock(ctx) }()
	waiter, nc := e.client()
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Lock(context.Background(), "job")
		done <- err
	}()
	natstest.Eventually(t, 5*time.Second, "the waiter's watch", func() bool { return e.consumers() == waitingWatches })
	closed := time.Now()
	nc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, nats.ErrConnectionClosed) {
			t.Fatalf("Lock = %v; want an error wrapping nats.ErrConnectionClosed", err)
		}
		if took := time.Since(closed); took > time.Second {
			t.Fatalf("Lock returned %v after its connection closed; want within a second", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock still waiting 10s after its connection was closed")
	}
}

// TryLock on a key that a Lock of the same Client holds says so, naming
// that Lock as the holder; another Client is told of another owner.
func TestTryLockHeldByThisClient(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	other, _ := e.client()
	l := mustLock(t, c, "mine")
	_, err := c.TryLock(natstest.Context(t), "mine")
	var le *dlock.LockedError
	if !errors.As(err, &le) || !errors.Is(err, dlock.ErrLocked) || !le.ByThisClient || le.Holder.Owner != l.Owner() ||
		!strings.Contains(err.Error(), "held by this client") || !strings.Contains(err.Error(), l.Owner()) {
		t.Fatalf("TryLock on our own key: %v (%+v)", err, le)
	}
	_, err = other.TryLock(natstest.Context(t), "mine")
	if !errors.As(err, &le) || le.ByThisClient || !strings.Contains(err.Error(), "held by another owner") {
		t.Fatalf("TryLock from another client: %v", err)
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatal(err)
	}
}

// TestRelockIsOneWrite: a Client that unlocked a key cleanly takes it
// again with one write and no read: its lease knows the purge marker its
// release left.
func TestRelockIsOneWrite(t *testing.T) {
	e := newEnv(t, 10*time.Second)
	c, nc := e.client()
	ctx := natstest.Context(t)
	l := mustLock(t, c, "again")
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	spy := e.srv.Connect()
	sub, err := spy.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	l2 := mustLock(t, c, "again")
	if err := nc.Publish("sentinel.relock", nil); err != nil { // marks the end of Lock's traffic
		t.Fatal(err)
	}
	writes, reads := 0, 0
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("spy: %v", err)
		}
		if m.Subject == "sentinel.relock" {
			break
		}
		switch {
		case strings.HasPrefix(m.Reply, "$JS.ACK."): // a watch's delivery
		case strings.HasPrefix(m.Subject, "$KV."+e.bucket+".again"):
			writes++
		case strings.HasPrefix(m.Subject, "$JS.API.STREAM.MSG.GET") || strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET"):
			reads++
		}
	}
	if writes != 1 || reads != 0 {
		t.Fatalf("relocking sent %d writes and %d reads; want one write", writes, reads)
	}
	if l2.Token() <= l.Token() {
		t.Fatalf("token %d after %d", l2.Token(), l.Token())
	}
	if err := l2.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
