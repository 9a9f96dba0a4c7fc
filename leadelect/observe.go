package leadelect

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natskvlease/natskvlease/internal/wait"
)

const (
	// observeBuffer is how many unread changes an Observe channel holds.
	observeBuffer = 64
	// rewatchDelay separates attempts to (re)open the bucket or watch.
	rewatchDelay = 250 * time.Millisecond
	// closedCheck is how often a watch looks for a closed connection,
	// which nats.go does not always report on the watch itself.
	closedCheck = 250 * time.Millisecond
	// bucketPoll is how often an Observer looks for a bucket that does
	// not exist yet.
	bucketPoll = time.Second
)

// follower watches an election's key and publishes every change of
// leadership: a new term or a vacancy. Renewals within a term are not
// changes. It is the engine of Observe and of Run's OnNewLeader.
type follower struct {
	open     func(ctx context.Context) (jetstream.KeyValue, error)
	key      string
	conn     *nats.Conn
	logger   *slog.Logger
	out      chan LeaderInfo
	onClosed func() // called when the connection is found closed; may be nil

	self string // nonce of the Election that follows, if any

	mu      sync.Mutex
	last    LeaderInfo
	known   bool
	changed chan struct{} // closed and replaced at every entry seen
	// For waitOther, which must not miss states that pass quickly:
	otherRev   uint64 // revision of the latest term write not by self
	lastVacRev uint64 // revision of the latest vacancy seen
	prevVacRev uint64 // revision of the distinct vacancy before it
	maxRev     uint64 // the latest revision seen
}

func newFollower(open func(context.Context) (jetstream.KeyValue, error), key string, conn *nats.Conn, logger *slog.Logger) *follower {
	return &follower{
		open:    open,
		key:     key,
		conn:    conn,
		logger:  logger,
		out:     make(chan LeaderInfo, observeBuffer),
		changed: make(chan struct{}),
	}
}

// run follows the key until ctx ends or the connection is closed, then
// closes f.out. A watch that ends is re-created; the new watch's first
// entry is the key's latest state, so nothing but intermediate states
// can be missed.
func (f *follower) run(ctx context.Context) {
	defer close(f.out)
	kv := f.openBucket(ctx)
	for kv != nil && f.alive(ctx) {
		w, err := kv.Watch(ctx, f.key)
		if err != nil {
			f.logger.Debug("leadelect: watch failed; retrying", "key", f.key, "error", err)
			f.pause(ctx, rewatchDelay)
			continue
		}
		f.consume(ctx, w)
		_ = w.Stop()
		f.pause(ctx, rewatchDelay)
	}
}

// openBucket opens the bucket, waiting for it to exist if need be. Nil
// means give up: ctx ended, the connection closed, or a permanent error
// (logged).
func (f *follower) openBucket(ctx context.Context) jetstream.KeyValue {
	for f.alive(ctx) {
		kv, err := f.open(ctx)
		switch {
		case err == nil:
			return kv
		case errors.Is(err, errBucketMissing):
			f.publish(LeaderInfo{}) // no bucket, no leader
			f.pause(ctx, bucketPoll)
		case permanent(err):
			f.logger.Error("leadelect: cannot observe the election", "key", f.key, "error", err)
			return nil
		default:
			f.logger.Debug("leadelect: opening bucket; retrying", "key", f.key, "error", err)
			f.pause(ctx, rewatchDelay)
		}
	}
	return nil
}

// consume reads one watch until it ends, ctx ends or the connection
// closes.
func (f *follower) consume(ctx context.Context, w jetstream.KeyWatcher) {
	tick := time.NewTicker(closedCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if !f.alive(ctx) {
				return
			}
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			f.apply(e)
		}
	}
}

// apply publishes the state one watched entry records. The nil entry
// that ends the initial values means an empty key if nothing came
// before it.
func (f *follower) apply(e jetstream.KeyValueEntry) {
	if e == nil {
		if !f.isKnown() {
			f.publish(LeaderInfo{})
		}
		return
	}
	info, err := infoOf(e)
	if err != nil {
		f.logger.Warn("leadelect: ignoring a value no candidate wrote", "key", f.key, "revision", e.Revision(), "error", err)
		return
	}
	f.publish(info)
}

func (f *follower) isKnown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.known
}

// publish records info and sends it on f.out if it is a change.
func (f *follower) publish(info LeaderInfo) {
	f.mu.Lock()
	f.record(info)
	close(f.changed)
	f.changed = make(chan struct{})
	if f.known && f.last.sameTerm(info) {
		f.last = info
		f.mu.Unlock()
		return
	}
	f.last, f.known = info, true
	f.mu.Unlock()
	offer(f.out, info)
}

// record notes what waitOther needs; f.mu is held.
func (f *follower) record(info LeaderInfo) {
	f.maxRev = max(f.maxRev, info.Revision)
	switch {
	case !info.Vacant() && info.Nonce != f.self:
		f.otherRev = max(f.otherRev, info.Revision)
	case info.Vacant() && info.Revision > f.lastVacRev:
		f.prevVacRev, f.lastVacRev = f.lastVacRev, info.Revision
	}
}

// waitOther waits until another candidate is seen to have led after
// revision token (the self's term), d passes, or ctx ends. Another's
// term shows as a write of its own, or, if a lagging watch skipped that
// write, as a second vacancy after the self's release, or as any
// revision after released, the revision of the self's release marker
// (0 if unknown): a watch that lagged may have skipped the self's marker
// too, and History 1 keeps only the latest revision.
func (f *follower) waitOther(ctx context.Context, token, released uint64, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		f.mu.Lock()
		seen := f.otherLed(token, released)
		changed := f.changed
		f.mu.Unlock()
		if seen {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// otherLed reports whether another candidate has led since the self's
// term (see waitOther); f.mu is held.
func (f *follower) otherLed(token, released uint64) bool {
	return f.otherRev > token || f.prevVacRev > token || released > 0 && f.maxRev > released
}

// alive reports whether following should go on, and tells onClosed once
// the connection is found closed.
func (f *follower) alive(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if f.conn != nil && f.conn.IsClosed() {
		if f.onClosed != nil {
			f.onClosed()
		}
		return false
	}
	return true
}

func (f *follower) pause(ctx context.Context, d time.Duration) { wait.Sleep(ctx, d) }

// offer sends v on ch without ever blocking: when ch's buffer is full it
// drops the oldest unread value to make room, so a slow reader still
// receives the latest value, in order after the ones it kept. It must be
// the only sender on ch.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
