package natskvlease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AcquireWait blocks until the lease is acquired or ctx ends. It first
// tries once, which on a free key is all it does; only if the key is
// taken does it wait: it takes a place in the key's waiter queue (see
// below) and watches the key, so that a release or expiry by the holder
// wakes it at once and the acquisition is one write on the marker's
// revision. Should the watch fall silent, it polls: half a TTL (with
// jitter) after the last sign of life.
//
// Waiters queue on the server, first come first served: each keeps a
// ticket (a key "_waiting.<key>.<nonce>" with a per-message TTL, renewed
// while it waits, purged when it is done), and when the key frees only
// the waiter with the oldest ticket writes. A waiter that dies or pauses
// holds the others up for at most one TTL, when its ticket expires. A
// newcomer that finds the key free at its first try takes it without
// queueing. The queue needs per-message TTLs (a bound KeyValue on a
// bucket that allows them); without them waiters all try when the key
// frees, and the losers learn of the winner from the watch.
//
// It returns nil once the lease is held, ctx's error if ctx ends first,
// and at once any error that retrying cannot cure (see IsFinal): an
// invalid configuration, a TTL the bucket cannot honour, a connection
// closed for good (errors.Is(err, nats.ErrConnectionClosed)).
func (l *Lease) AcquireWait(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	var ok bool
	var err error
	if !l.yieldsToQueue(ctx) {
		ok, err = l.acquire(ctx, false)
	}
	switch {
	case ok:
		return nil
	case IsFinal(err):
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	}
	var q *queue
	if l.canQueue() {
		if q, err = l.joinQueue(ctx); err != nil {
			if IsFinal(err) {
				return err
			}
			l.logger.Debug("natskvlease: no place in the queue; waiting without one", "error", err)
			q = nil
		}
	}
	wt := &waiting{lease: l, q: q, poll: time.NewTimer(0)}
	defer wt.end()
	return wt.run(ctx)
}

// waiting is one AcquireWait after its first try. With a queue ticket
// it watches the ticket right ahead of its own, and once first the key;
// without one, it watches the key. Either way it has one watch.
type waiting struct {
	lease *Lease
	q     *queue
	// ahead is the ticket right ahead of this waiter's, whose watch w is;
	// empty once this waiter is first (or without a queue), when w is
	// the key's watch.
	ahead     string
	aheadSeen time.Time // when the ticket ahead was last seen written
	w         *keyWatch
	// poll fires when the watch has been silent for too long, or a lost
	// race wants a second look.
	poll *time.Timer
	// duty fires when the ticket is due for renewal, or the ticket ahead
	// may have expired unseen.
	duty *time.Timer

	freedAt  time.Time // when the key's watch last showed it vacant
	sawEntry bool      // the watch has shown an entry of its key
	free     bool      // the key was vacant when last seen
}

func (wt *waiting) run(ctx context.Context) error {
	l, q := wt.lease, wt.q
	// A closed connection ends the wait at once. The watch's channel
	// closes with the connection too, but not while nats.go is
	// re-creating the watch's consumer (it does after missed
	// heartbeats, as on a loaded machine), which left a waiter to find
	// out at its next poll.
	var closed chan nats.Status
	if l.ops.js != nil {
		nc := l.ops.js.Conn()
		closed = nc.StatusChanged(nats.CLOSED)
		defer nc.RemoveStatusListener(closed)
		if nc.IsClosed() {
			return l.closedWhileWaiting()
		}
	}
	wt.duty = time.NewTimer(time.Hour)
	wt.duty.Stop() // runs only while there is a ticket to renew
	if q != nil {
		wt.locate(ctx)
		wt.scheduleDuty()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return l.closedWhileWaiting()
		case <-wt.duty.C:
			if q.renewDue() == 0 && q.renew(ctx) {
				wt.locate(ctx) // a new ticket, at the back
			} else if wt.aheadStale(time.Now()) {
				wt.locate(ctx)
			}
			wt.scheduleDuty()
			continue
		case e, ok := <-wt.w.updates():
			if !ok {
				// Closed under us (a closed connection, a deleted
				// consumer): look again now, and watch anew.
				wt.w.stop()
				wt.w, wt.sawEntry = nil, false
				wt.poll.Reset(0)
				continue
			}
			if wt.ahead != "" {
				wt.onAheadEntry(ctx, e)
				continue
			}
			if !wt.onKeyEntry(e) {
				continue
			}
		case <-wt.poll.C:
			if wt.w == nil {
				if wt.w = wt.startWatch(ctx); wt.w != nil {
					// Its first entries are the latest state: a vacancy
					// since the last try shows there, so there is
					// nothing to try until they arrive.
					wt.poll.Reset(pollInterval(l.TTL()))
					continue
				}
			} else if wt.ahead != "" {
				// The ticket ahead, renewed every third of a TTL, has
				// been silent for half of one: look at the queue anew.
				wt.locate(ctx)
				continue
			} else {
				// The key's watch has been silent for half a TTL, though
				// a live holder renews more often: its holder is gone
				// (its expiry is on the way) or the watch has stalled.
				// Watch anew, and try meanwhile.
				wt.follow(ctx, "")
			}
			// The key's watch is silent, or a watch cannot be had (the
			// attempt then says why, a closed connection for one): try.
		}
		tried := time.Now()
		ok, err := l.acquire(ctx, wt.w != nil)
		recheck, lost := contended(err)
		switch {
		case ok:
			if wt.freedAt.IsZero() && wt.w != nil {
				// Its read, not the watch, showed the key free (a
				// recheck after a lost race can come first).
				wt.freedAt = tried
			}
			if !wt.freedAt.IsZero() {
				l.record(Event{Kind: EventHandoff, Duration: time.Since(wt.freedAt)})
			}
			return nil
		case lost:
			// The other write is on its way to the watch, which resets
			// the poll; look again soon in case it never lands.
			wt.poll.Reset(recheck)
			if q != nil && wt.ahead == "" {
				// First, and beaten: write the ticket again now, so that
				// the holding that beat this waiter is crowded and its
				// holder, should it release and try again at once, goes
				// behind the queue (see yieldsToQueue).
				if q.renew(ctx) {
					wt.locate(ctx)
				}
				wt.scheduleDuty()
			}
			continue
		case IsFinal(err):
			return err
		case err != nil:
			l.logger.Debug("natskvlease: acquire", "error", err)
		}
		wt.poll.Reset(pollInterval(l.TTL()))
	}
}

// closedWhileWaiting is AcquireWait's error for a connection closed for
// good.
func (l *Lease) closedWhileWaiting() error {
	return fmt.Errorf("natskvlease: waiting for %q: %w", l.cfg.Key, nats.ErrConnectionClosed)
}

// onKeyEntry records an entry of the key's watch (nil: the end of its
// initial values) and reports whether to try to acquire now.
func (wt *waiting) onKeyEntry(e jetstream.KeyValueEntry) bool {
	l := wt.lease
	switch {
	case e == nil && wt.sawEntry:
		return false // the end of the initial values
	case e == nil:
		// No entry of the key: it has no message at all.
		l.observe(snapshot{vacant: true, revKnown: true})
		wt.free = true
	default:
		wt.sawEntry = true
		s := snapshotOf(e)
		l.observe(s)
		wt.free = s.vacant
		if s.vacant {
			wt.freedAt = time.Now()
		}
		if l.othersWrite(e) {
			// Held by another, and the watch is alive.
			wt.poll.Reset(pollInterval(l.TTL()))
			return false
		}
	}
	return wt.free
}

// onAheadEntry follows the ticket ahead: its renewals, and its end. A
// ticket that left as first leaves this waiter first; one that left
// otherwise, or expired, leaves it to look at the queue again.
func (wt *waiting) onAheadEntry(ctx context.Context, e jetstream.KeyValueEntry) {
	switch {
	case e == nil && wt.sawEntry:
		return // the end of the initial values
	case e == nil:
		wt.locate(ctx) // gone before the watch began
	case e.Operation() == jetstream.KeyValuePut:
		wt.sawEntry = true
		wt.aheadSeen = time.Now()
		wt.poll.Reset(pollInterval(wt.lease.TTL()))
	case string(e.Value()) == leftFirst:
		wt.follow(ctx, "")
	default:
		wt.locate(ctx)
	}
}

// locate finds the ticket right ahead of this waiter's and follows it,
// or the key if there is none. A queue that cannot be listed leaves the
// waiter watching the key, as if first: the revision check still decides.
func (wt *waiting) locate(ctx context.Context) {
	if ctx.Err() != nil {
		return // the loop returns; nothing to watch for
	}
	t, found, err := wt.q.ahead(ctx)
	if err != nil {
		wt.lease.logger.Debug("natskvlease: cannot list the waiter queue; watching the key", "error", err)
	}
	if !found {
		t.key = ""
	}
	wt.follow(ctx, t.key)
}

// follow watches the ticket ahead (or, for "", the key) from now on,
// ending the watch it replaces.
func (wt *waiting) follow(ctx context.Context, ahead string) {
	if wt.w != nil {
		go wt.w.stop()
		wt.w = nil
	}
	wt.ahead, wt.aheadSeen = ahead, time.Now()
	if wt.w = wt.startWatch(ctx); wt.w != nil {
		wt.poll.Reset(pollInterval(wt.lease.TTL()))
	} else {
		wt.poll.Reset(0) // poll, and watch when it can
	}
}

// startWatch starts the watch of the ticket ahead, or of the key.
func (wt *waiting) startWatch(ctx context.Context) *keyWatch {
	wt.sawEntry = false
	if wt.ahead != "" {
		return wt.lease.watch(ctx, wt.ahead)
	}
	return wt.lease.watch(ctx, wt.lease.cfg.Key)
}

// aheadStale reports whether the ticket ahead has outlived its TTL
// unseen.
func (wt *waiting) aheadStale(now time.Time) bool {
	return wt.ahead != "" && ticketGone(wt.aheadSeen, now, wt.lease.TTL())
}

// scheduleDuty sets the duty timer for the ticket's next renewal, or
// sooner for a ticket ahead that may expire unseen.
func (wt *waiting) scheduleDuty() {
	due := wt.q.renewDue()
	if wt.ahead != "" {
		due = min(due, max(time.Until(ticketGoneAt(wt.aheadSeen, wt.lease.TTL())), 0))
	}
	wt.duty.Reset(due)
}

// end stops the watch and leaves the queue, in the background: deleting
// a consumer and purging the ticket are round trips the caller, who
// holds the lease now or has given up, need not wait for.
func (wt *waiting) end() {
	wt.poll.Stop()
	if wt.duty != nil {
		wt.duty.Stop()
	}
	if wt.w != nil {
		go wt.w.stop()
	}
	if wt.q != nil {
		go wt.q.leave(wt.ahead == "")
	}
}

// keyWatch is a watch on the lease's key that outlives the context it
// was started under: its owner stops it, after any release. Ending it
// deletes its consumer, which on a replicated bucket goes through the
// cluster's meta leader; let that run at the same time as a release and
// it slows the release that a waiter is waiting for.
type keyWatch struct {
	w      jetstream.KeyWatcher
	cancel context.CancelFunc // ends nats.go's wait on the watch's context
}

// watch starts a watch on keys (a key, or a filter such as the queue's),
// or returns nil (and the caller polls) if the server cannot be reached.
// Starting it honours ctx; the watch then lasts until stop.
func (l *Lease) watch(ctx context.Context, keys string) *keyWatch {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopStarting := context.AfterFunc(ctx, cancel)
	w, err := l.ops.kv.Watch(wctx, keys)
	if !stopStarting() || err != nil {
		cancel()
		if err == nil {
			_ = w.Stop()
		}
		l.logger.Debug("natskvlease: watch failed; polling until it works", "error", err)
		return nil
	}
	return &keyWatch{w: w, cancel: cancel}
}

// othersWrite reports a watched entry that is another holder's value.
func (l *Lease) othersWrite(e jetstream.KeyValueEntry) bool {
	return e.Operation() == jetstream.KeyValuePut && !l.isOwner(e.Value())
}

// updates is the watch's channel; nil (never ready) for no watch.
func (k *keyWatch) updates() <-chan jetstream.KeyValueEntry {
	if k == nil {
		return nil
	}
	return k.w.Updates()
}

// stop ends the watch and deletes its consumer (a round trip).
func (k *keyWatch) stop() {
	if k == nil {
		return
	}
	_ = k.w.Stop()
	k.cancel()
}

// pollInterval is half a TTL with ±20% jitter, so that waiters do not
// poll in step.
func pollInterval(ttl time.Duration) time.Duration {
	if ttl == 0 {
		ttl = DefaultBucketTTL
	}
	half := ttl / 2
	return half - half/5 + rand.N(2*half/5+1)
}
