package natskvlease

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// liveTickets counts the live tickets of key, read from the stream.
func liveTickets(t *testing.T, js jetstream.JetStream, bucket, key string) int {
	t.Helper()
	ctx := natstest.Context(t)
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := kv.ListKeysFiltered(ctx, queueFilter(key))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lister.Stop() }()
	n := 0
	for range lister.Keys() {
		n++
	}
	return n
}

// waiter is a lease waiting with AcquireWait on a connection of its own.
type waiter struct {
	name  string
	lease *Lease
	nc    *nats.Conn
	done  chan error
}

func startWaiter(t *testing.T, srv *natstest.Server, bucket, key, name string, ttl time.Duration, ctx context.Context) *waiter {
	t.Helper()
	nc, js := srv.JetStream()
	kv, err := js.KeyValue(natstest.Context(t), bucket)
	if err != nil {
		t.Fatal(err)
	}
	w := &waiter{name: name, nc: nc, done: make(chan error, 1)}
	w.lease = NewLease(BindJetStream(kv, js), LeaseConfig{Key: key, Value: []byte(name), TTL: ttl})
	go func() { w.done <- w.lease.AcquireWait(ctx) }()
	return w
}

// nextHolder waits for the next of ws whose AcquireWait returns, and
// fails the test on an error or if none does within 10s.
func nextHolder(t *testing.T, ws []*waiter) *waiter {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, w := range ws {
			select {
			case err := <-w.done:
				if err != nil {
					t.Fatalf("%s: %v", w.name, err)
				}
				return w
			default:
			}
		}
		time.Sleep(time.Millisecond) // a poll of the waiters' results
	}
	t.Fatal("no waiter acquired the key within 10s")
	return nil
}

// TestQueueFirstComeFirstServed: twenty waiters, each on its own
// connection and started once the one before holds its ticket, hold the
// key in the order they started, as each releases it to the next.
func TestQueueFirstComeFirstServed(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 30*time.Second)
	ctx := natstest.Context(t)
	holder := NewLease(kv, leaseCfg("job", "holder"))
	mustAcquire(t, holder)
	const n = 20
	ws := make([]*waiter, n)
	for i := range ws {
		ws[i] = startWaiter(t, srv, kv.Bucket(), "job", fmt.Sprintf("w%02d", i), 30*time.Second, ctx)
		natstest.Eventually(t, 5*time.Second, fmt.Sprintf("w%02d's ticket", i), func() bool { return liveTickets(t, js, kv.Bucket(), "job") == i+1 })
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var order []string
	for range n {
		got := nextHolder(t, ws)
		order = append(order, got.name)
		if !got.lease.IsHeld() {
			t.Fatalf("%s returned but does not hold", got.name)
		}
		if err := got.lease.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range order {
		if want := fmt.Sprintf("w%02d", i); name != want {
			t.Fatalf("waiters held the key in the order %v; want the order they started in", order)
		}
	}
	natstest.Eventually(t, 5*time.Second, "every ticket gone", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == 0 })
}

// TestQueueTwoWritesPerHandoff: with ten waiters queued, a release makes
// one waiter write: its acquisition, and the purge of its ticket.
func TestQueueTwoWritesPerHandoff(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 30*time.Second)
	ctx := natstest.Context(t)
	holder := NewLease(kv, leaseCfg("job", "holder"))
	mustAcquire(t, holder)
	const n = 10
	ws := make([]*waiter, n)
	for i := range ws {
		ws[i] = startWaiter(t, srv, kv.Bucket(), "job", fmt.Sprintf("w%d", i), 30*time.Second, ctx)
	}
	natstest.Eventually(t, 5*time.Second, "ten tickets", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == n })
	natstest.Eventually(t, 5*time.Second, "ten ticket watches and the first waiter's key watch", func() bool { return consumers(t, js, kv.Bucket()) == n+1 })
	sub := spyAll(t, srv)
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	first := nextHolder(t, ws)
	natstest.Eventually(t, 5*time.Second, "the first waiter's ticket gone", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == n-1 })
	// Anything a herd would send comes within milliseconds of the
	// release; give it a quiet while to show up before counting.
	time.Sleep(300 * time.Millisecond)
	keySubj := "$KV." + kv.Bucket() + ".job"
	ticketPrefix := "$KV." + kv.Bucket() + "." + queuePrefix
	var onKey, onTickets int
	for {
		m, err := sub.NextMsg(50 * time.Millisecond)
		if err != nil {
			break
		}
		if strings.HasPrefix(m.Reply, "$JS.ACK.") {
			continue // a watch's delivery, not a write
		}
		switch {
		case m.Subject == keySubj:
			onKey++
		case strings.HasPrefix(m.Subject, ticketPrefix):
			onTickets++
		}
	}
	onKey-- // the holder's release
	t.Logf("handoff to %s: %d write(s) on the key, %d on tickets", first.name, onKey, onTickets)
	if onKey != 1 || onKey+onTickets > 2 {
		t.Fatalf("a handoff to one of %d waiters made %d writes on the key and %d on tickets; want one acquisition and at most two writes", n, onKey, onTickets)
	}
	for _, w := range ws {
		if w != first && w.lease.IsHeld() {
			t.Fatalf("%s holds too", w.name)
		}
	}
	if err := first.lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestQueueStuckWaiterBlocksAtMostTTL: the first waiter in the queue dies
// (its connection closed), pauses (its traffic black-holed) or gives up
// (its context cancelled). The next waiter holds the key after a release
// within the stuck ticket's TTL, and a cancelled waiter does not hold it
// up at all.
func TestQueueStuckWaiterBlocksAtMostTTL(t *testing.T) {
	const ttl = 2 * time.Second
	for _, how := range []string{"dies", "pauses", "cancels"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Start(t)
			js, kv := testBucket(t, srv, ttl)
			ctx := natstest.Context(t)
			holder := NewLease(kv, LeaseConfig{Key: "job", Value: []byte("holder"), TTL: ttl})
			if ok, err := holder.RunCamping(ctx); !ok || err != nil {
				t.Fatal(ok, err)
			}
			// The stuck waiter, first in the queue.
			first, p := faultyLease(t, srv, kv.Bucket(), LeaseConfig{Key: "job", Value: []byte("first"), TTL: ttl})
			firstCtx, cancelFirst := context.WithCancel(ctx)
			defer cancelFirst()
			firstDone := make(chan error, 1)
			go func() { firstDone <- first.AcquireWait(firstCtx) }()
			natstest.Eventually(t, 5*time.Second, "the first ticket", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == 1 })
			next := startWaiter(t, srv, kv.Bucket(), "job", "next", ttl, ctx)
			natstest.Eventually(t, 5*time.Second, "the second ticket", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == 2 })
			switch how {
			case "dies":
				p.CutAll()
				p.RefuseNew(true)
			case "pauses":
				p.Blackhole(true)
			case "cancels":
				cancelFirst()
				<-firstDone
				natstest.Eventually(t, 5*time.Second, "the cancelled ticket gone", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == 1 })
			}
			released := time.Now()
			holder.StopCamping()
			select {
			case err := <-next.done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("the next waiter still waits 10s after the release; the first %s", how)
			}
			took := time.Since(released)
			t.Logf("the first waiter %s: the next held the key %v after the release", how, took.Round(time.Millisecond))
			if took > ttl+time.Second {
				t.Fatalf("the next waiter held the key %v after the release; a stuck ticket may hold it up for its TTL (%v) at most", took, ttl)
			}
			if first.IsHeld() {
				t.Fatal("the stuck waiter holds the key too")
			}
			p.Blackhole(false)
			p.RefuseNew(false)
			if err := next.lease.Release(ctx); err != nil {
				t.Fatal(err)
			}
			cancelFirst()
		})
	}
}

// TestQueueRenewAfterExpiryRejoins: a waiter whose ticket is gone (it
// expired while the waiter was paused) takes a new ticket at the back,
// once, rather than retrying the old one.
func TestQueueRenewAfterExpiryRejoins(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	ctx := natstest.Context(t)
	l := NewLease(kv, leaseCfg("job", "waiter"))
	prepared(t, l)
	q, err := l.joinQueue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldKey, oldPlace := q.key, q.place
	if _, err := l.ops.purge(ctx, q.key, q.rev, time.Second); err != nil { // as an expiry would
		t.Fatal(err)
	}
	q.renew(ctx)
	if q.key == oldKey || q.place <= oldPlace || !q.first(time.Now()) {
		t.Fatalf("after renewing a gone ticket: key %s (was %s), place %d (was %d); want a new ticket at the back", q.key, oldKey, q.place, oldPlace)
	}
	if d := q.renewDue(); d <= 0 {
		t.Fatalf("renewal due in %v right after joining again; want a third of the TTL", d)
	}
	// A renewal that cannot be made (the bucket is gone) is not retried
	// at once.
	_, js := srv.JetStream()
	if err := js.DeleteKeyValue(ctx, kv.Bucket()); err != nil {
		t.Fatal(err)
	}
	q.renew(ctx)
	if d := q.renewDue(); d <= 0 {
		t.Fatalf("renewal due in %v after a failed one; want a pause", d)
	}
	q.leave()
}

// waitingWatches is how many consumers a lone queued waiter keeps: a
// watch on the tickets, and, being first, one on the key.
const waitingWatches = 2

// A ticket ahead counts until it has gone unseen for longer than its
// TTL (its waiter renews it every third of one), then no more: a bucket
// without expiry markers, or a watch gone quiet, cannot hold the queue
// up for good.
func TestTicketsAhead(t *testing.T) {
	const ttl = 3 * time.Second
	t0 := time.Unix(1000, 0)
	places := map[string]ticketSeen{
		"own":   {place: 10, seen: t0},
		"older": {place: 5, seen: t0},
		"newer": {place: 12, seen: t0},
	}
	for _, c := range []struct {
		name  string
		at    time.Time
		ahead int
	}{
		{"just seen", t0, 1},
		{"within its TTL", t0.Add(ttl), 1},
		{"just before its life ends", t0.Add(ticketLife(ttl) - time.Nanosecond), 1},
		{"after its life", t0.Add(ticketLife(ttl)), 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ticketsAhead(places, "own", 10, c.at, ttl); got != c.ahead {
				t.Fatalf("%d tickets ahead, want %d", got, c.ahead)
			}
		})
	}
	if got := ticketsAhead(map[string]ticketSeen{"own": {place: 10, seen: t0}}, "own", 10, t0, ttl); got != 0 {
		t.Fatalf("alone: %d tickets ahead, want 0", got)
	}
}

// TestQueueReleaserGoesBehindWaiters: a holder that releases and at once
// waits again does not starve the waiters queued while it held the key
// (without the check its release sends, its write on its own release
// marker comes a round trip before the first waiter's, every time): the
// waiters hold the key in the order they queued, and the releaser after
// them. With no one queued, it takes the key back at once.
func TestQueueReleaserGoesBehindWaiters(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 30*time.Second)
	ctx := natstest.Context(t)
	looper := NewLease(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "looper"))
	mustAcquire(t, looper)
	const n = 3
	ws := make([]*waiter, n)
	for i := range ws {
		ws[i] = startWaiter(t, srv, kv.Bucket(), "job", fmt.Sprintf("w%d", i), 30*time.Second, ctx)
		natstest.Eventually(t, 5*time.Second, fmt.Sprintf("w%d's ticket", i), func() bool { return liveTickets(t, js, kv.Bucket(), "job") == i+1 })
	}
	looped := make(chan error, 1)
	go func() {
		if err := looper.Release(ctx); err != nil {
			looped <- err
			return
		}
		looped <- looper.AcquireWait(ctx) // at once, as a loop would
	}()
	for i := range n {
		got := nextHolder(t, ws)
		if want := fmt.Sprintf("w%d", i); got.name != want {
			t.Fatalf("holding %d went to %s, want %s", i, got.name, want)
		}
		select {
		case err := <-looped:
			t.Fatalf("the releaser got the key back (err %v) while %s held it or waited", err, got.name)
		default:
		}
		if looper.IsHeld() {
			t.Fatalf("the releaser holds the key while %s does", got.name)
		}
		if err := got.lease.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-looped:
		if err != nil || !looper.IsHeld() {
			t.Fatalf("the releaser's turn: AcquireWait = %v, held %v", err, looper.IsHeld())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the releaser did not get its turn after the waiters")
	}
	natstest.Eventually(t, 5*time.Second, "every ticket gone", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == 0 })
	// Alone, a release and an acquisition take the key back at once.
	for range 5 {
		if err := looper.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if ok, err := looper.Acquire(ctx); !ok || err != nil {
			t.Fatalf("relock with no one queued: %v, %v", ok, err)
		}
	}
}
