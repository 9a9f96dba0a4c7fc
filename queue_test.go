package natskvlease

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
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

// startSlowWaiter is startWaiter through a fault proxy, which delays
// its traffic by delay once its ticket is written: it is always the
// slower in a race for a vacancy.
func startSlowWaiter(t *testing.T, srv *natstest.Server, js jetstream.JetStream, bucket, key, name string, ttl, delay time.Duration, ctx context.Context) *waiter {
	t.Helper()
	before := liveTickets(t, js, bucket, key)
	l, p := faultyLease(t, srv, bucket, LeaseConfig{Key: key, Value: []byte(name), TTL: ttl})
	w := &waiter{name: name, lease: l, done: make(chan error, 1)}
	go func() { w.done <- w.lease.AcquireWait(ctx) }()
	natstest.Eventually(t, 5*time.Second, name+"'s ticket", func() bool { return liveTickets(t, js, bucket, key) == before+1 })
	p.SetDelay(delay)
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

// TestQueueTwoWritesPerHandoff: with ten waiters queued, a release
// reaches one waiter's watch, and that waiter writes: its acquisition,
// and the purge of its ticket.
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
	// One watch each: the first waiter's of the key, the others' of the
	// ticket ahead of theirs.
	natstest.Eventually(t, 5*time.Second, "ten watches", func() bool { return consumers(t, js, kv.Bucket()) == n })
	sub := spyAll(t, srv)
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	marker, _ := holder.lastSeen() // the release's marker
	first := nextHolder(t, ws)
	natstest.Eventually(t, 5*time.Second, "the first waiter's ticket gone", func() bool { return liveTickets(t, js, kv.Bucket(), "job") == n-1 })
	// Anything a herd would send comes within milliseconds of the
	// release; give it a quiet while to show up before counting.
	time.Sleep(300 * time.Millisecond)
	keySubj := "$KV." + kv.Bucket() + ".job"
	ticketPrefix := "$KV." + kv.Bucket() + "." + queuePrefix
	var onKey, onTickets, deliveries int
	for {
		m, err := sub.NextMsg(50 * time.Millisecond)
		if err != nil {
			break
		}
		if strings.HasPrefix(m.Reply, "$JS.ACK.") {
			// A watch's delivery, not a write.
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream == marker.rev {
				deliveries++
			}
			continue
		}
		switch {
		case m.Subject == keySubj:
			onKey++
		case strings.HasPrefix(m.Subject, ticketPrefix):
			onTickets++
		}
	}
	onKey-- // the holder's release
	t.Logf("handoff to %s: %d write(s) on the key, %d on tickets; the release was delivered to %d watch(es)", first.name, onKey, onTickets, deliveries)
	if deliveries != 1 {
		t.Fatalf("the release (revision %d) reached %d watches of %d waiters; want only the first waiter's", marker.rev, deliveries, n)
	}
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
			if how == "cancels" {
				return // done already
			}
			cancelFirst()
			// A stuck waiter that gives up purges any write of its own
			// whose answer it lacks, within two attempts' timeouts.
			select {
			case <-firstDone:
			case <-time.After(5 * time.Second):
				t.Fatal("the stuck waiter's AcquireWait did not return after its context ended")
			}
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
	if !q.renew(ctx) {
		t.Fatal("renewing a gone ticket did not report joining again")
	}
	if q.key == oldKey || q.place <= oldPlace {
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
	q.leave(false)
}

// waitingWatches is how many consumers a lone queued waiter keeps: being
// first, a watch on the key, and nothing else.
const waitingWatches = 1

// A ticket counts as live until it has gone unseen for longer than its
// TTL (its waiter renews it every third of one), then no more: a bucket
// without expiry markers, or a watch gone quiet, cannot hold the queue
// up for good.
func TestTicketGone(t *testing.T) {
	const ttl = 3 * time.Second
	seen := time.Unix(1000, 0)
	for _, c := range []struct {
		name string
		at   time.Time
		gone bool
	}{
		{"just seen", seen, false},
		{"within its TTL", seen.Add(ttl), false},
		{"just before its life ends", seen.Add(ticketLife(ttl) - time.Nanosecond), false},
		{"at the end of its life", seen.Add(ticketLife(ttl)), true},
		{"long after", seen.Add(time.Hour), true},
	} {
		if got := ticketGone(seen, c.at, ttl); got != c.gone {
			t.Errorf("%s: gone %v, want %v", c.name, got, c.gone)
		}
	}
}

// A listing of the queue counts live tickets only, each at its place:
// the revision of its first write, which renewals carry in the value.
func TestTicketOf(t *testing.T) {
	const stored = "$KV.b."
	msg := func(subj string, seq uint64, data string, hdr ...string) *nats.Msg {
		m := &nats.Msg{Header: nats.Header{}, Data: []byte(data)}
		m.Header.Set(jetstream.SubjectHeader, subj)
		m.Header.Set(jetstream.SequenceHeader, fmt.Sprint(seq))
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		return m
	}
	for _, c := range []struct {
		name  string
		m     *nats.Msg
		want  ticket
		alive bool
	}{
		{"first write", msg(stored+"_waiting.job.a", 7, `{"n":"a"}`), ticket{key: "_waiting.job.a", place: 7}, true},
		{"renewal", msg(stored+"_waiting.job.a", 19, `{"n":"a","p":7}`), ticket{key: "_waiting.job.a", place: 7}, true},
		{"left", msg(stored+"_waiting.job.a", 20, "first", kvOperationHeader, kvOperationPurge), ticket{}, false},
		{"expired", msg(stored+"_waiting.job.a", 21, "", jetstream.MarkerReasonHeader, "MaxAge"), ticket{}, false},
		{"not a ticket's value", msg(stored+"_waiting.job.a", 22, "junk"), ticket{}, false},
		{"no subject", msg("", 23, `{"n":"a"}`), ticket{}, false},
	} {
		got, ok := ticketOf(c.m, stored)
		if ok != c.alive || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", c.name, got, ok, c.want, c.alive)
		}
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
	// The first waiter's traffic is delayed, so that it would lose every
	// race to a releaser that wrote at once.
	ws[0] = startSlowWaiter(t, srv, js, kv.Bucket(), "job", "w0", 30*time.Second, 20*time.Millisecond, ctx)
	for i := 1; i < n; i++ {
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

// TestQueueTightLoopYields: a holder that releases and waits again in a
// loop with no pause at all, while a waiter queues: the waiter holds the
// key within two of the loop's releases (the first waiter's ticket write
// makes the loop's holding crowded, and a first waiter beaten to a
// vacancy writes it again), and the loop goes on after it.
func TestQueueTightLoopYields(t *testing.T) {
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 30*time.Second)
	ctx := natstest.Context(t)
	looper := NewLease(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "looper"))
	mustAcquire(t, looper)
	var releases atomic.Int64
	stop := make(chan struct{})
	looped := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				looped <- looper.Release(ctx)
				return
			default:
			}
			if err := looper.Release(ctx); err != nil {
				looped <- err
				return
			}
			releases.Add(1)
			if err := looper.AcquireWait(ctx); err != nil {
				looped <- err
				return
			}
		}
	}()
	natstest.Eventually(t, 5*time.Second, "a few loops", func() bool { return releases.Load() >= 3 })
	// The waiter's traffic is delayed, so that it loses every race for a
	// vacancy to the loop, which relocks within a millisecond.
	w := startSlowWaiter(t, srv, js, kv.Bucket(), "job", "w", 30*time.Second, 20*time.Millisecond, ctx)
	queued := releases.Load()
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the waiter still waits after %d releases of the loop", releases.Load()-queued)
	}
	// The loop is now in AcquireWait, behind the waiter.
	if n := releases.Load() - queued; n > 3 {
		t.Fatalf("the waiter held the key after %d releases of the loop since its ticket was written; want at most 3 (two, and one the loop may have begun)", n)
	}
	if looper.IsHeld() {
		t.Fatal("the loop holds the key while the waiter does")
	}
	close(stop)
	if err := w.lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-looped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not get the key back after the waiter")
	}
}

// latestTicket reads the sequence of the latest message on the key's
// tickets, markers included, and of no other key's: 0 before any.
func TestLatestTicket(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	ctx := natstest.Context(t)
	l := NewLease(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "a"))
	other := NewLease(openBucket(t, srv, kv.Bucket()), leaseCfg("job2", "b"))
	prepared(t, l)
	prepared(t, other)
	if seq, err := l.latestTicket(ctx); seq != 0 || err != nil {
		t.Fatalf("no tickets: %d, %v; want 0", seq, err)
	}
	q, err := l.joinQueue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := l.latestTicket(ctx); seq != q.rev || err != nil {
		t.Fatalf("after joining at %d: %d, %v", q.rev, seq, err)
	}
	if _, err := other.joinQueue(ctx); err != nil { // another key's ticket
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "job", []byte("x")); err != nil { // the key itself
		t.Fatal(err)
	}
	if seq, err := l.latestTicket(ctx); seq != q.rev || err != nil {
		t.Fatalf("after other keys' writes: %d, %v; want %d", seq, err, q.rev)
	}
	q.leave(true)
	seq, err := l.latestTicket(ctx)
	if seq <= q.rev || err != nil {
		t.Fatalf("after leaving: %d, %v; want the purge's sequence, above %d", seq, err, q.rev)
	}
}
