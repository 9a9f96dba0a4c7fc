package natskvlease

import (
	"context"
	"math/rand/v2"
	"time"

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
	ok, err := l.acquire(ctx, false)
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
		}
	}
	var w *keyWatch
	defer func() {
		// Stopping deletes the watch's consumer, and leaving the queue
		// purges the ticket: round trips the caller, who holds the lease
		// now or has given up, need not wait for.
		if w != nil {
			go w.stop()
		}
		if q != nil {
			go q.leave()
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	renew := time.NewTimer(time.Hour)
	renew.Stop() // runs only while there is a ticket to renew
	defer renew.Stop()
	if q != nil {
		renew.Reset(q.renewDue())
	}
	var (
		freedAt  time.Time // when the watch last showed the key vacant
		sawEntry bool      // the watch has shown an entry of the key
		free     bool      // the key was vacant when last seen
	)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-renew.C:
			q.renew(ctx)
			renew.Reset(q.renewDue())
			continue
		case e, ok := <-w.updates():
			if !ok {
				// Closed under us (a closed connection, a deleted
				// consumer): look again now, and watch anew.
				w.stop()
				w, sawEntry = nil, false
				poll.Reset(0)
				continue
			}
			switch {
			case e != nil && q != nil && q.isTicket(e):
				q.see(e)
			case e == nil && sawEntry:
				continue // the end of the initial values
			case e == nil:
				// No entry of the key: it has no message at all.
				l.observe(snapshot{vacant: true, revKnown: true})
				free = true
			default:
				sawEntry = true
				s := snapshotOf(e)
				l.observe(s)
				free = s.vacant
				if s.vacant {
					freedAt = time.Now()
				}
				if l.othersWrite(e) {
					// Held by another, and the watch is alive.
					poll.Reset(pollInterval(l.TTL()))
					continue
				}
			}
			if !free || q != nil && !q.first() {
				continue // someone holds it, or an older ticket goes first
			}
		case <-poll.C:
			if w == nil {
				if w = l.watch(ctx, q); w != nil {
					// Its first entries are the key's latest state: a
					// vacancy since the last try shows there, so there is
					// nothing to try until they arrive.
					poll.Reset(pollInterval(l.TTL()))
					continue
				}
			}
			// The watch is silent (or cannot be had): try, queue or not.
		}
		tried := time.Now()
		ok, err := l.acquire(ctx, w != nil)
		recheck, lost := contended(err)
		switch {
		case ok:
			if freedAt.IsZero() && w != nil {
				// Its read, not the watch, showed the key free (a
				// recheck after a lost race can come first).
				freedAt = tried
			}
			if !freedAt.IsZero() {
				l.record(Event{Kind: EventHandoff, Duration: time.Since(freedAt)})
			}
			return nil
		case lost:
			// The other write is on its way to the watch, which resets
			// the poll; look again soon in case it never lands.
			poll.Reset(recheck)
			continue
		case IsFinal(err):
			return err
		case err != nil:
			l.logger.Debug("natskvlease: acquire", "error", err)
		}
		poll.Reset(pollInterval(l.TTL()))
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

// watch starts a watch on the key, and on the tickets of its queue if q
// is not nil, or returns nil (and the caller polls) if the server cannot
// be reached. Starting it honours ctx; the watch then lasts until stop.
func (l *Lease) watch(ctx context.Context, q *queue) *keyWatch {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopStarting := context.AfterFunc(ctx, cancel)
	keys := []string{l.cfg.Key}
	if q != nil {
		keys = append(keys, q.filter)
	}
	w, err := l.ops.kv.WatchFiltered(wctx, keys)
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
