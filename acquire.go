package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Acquire tries once to acquire the lease and reports whether it holds
// it. It returns (false, nil) when another holder has the key. Unlike
// AcquireWait, it does not look at the waiter queue: right after a
// release of this lease's, it may take the key back before the first
// waiter, as sync.Mutex's TryLock may. Transient
// errors are retried briefly; a write whose answer was lost is resolved
// by reading the key back. Acquire on a held lease renews it.
//
// Acquire is one round trip when the key is vacant at a known revision
// (after a Release by this Lease, or once a LeaseManager has seen the
// key's delete or expiry marker); otherwise it reads the key first.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	if l.cfgErr != nil {
		return false, l.cfgErr
	}
	return l.acquire(ctx, false)
}

// contendedError: a watched acquisition lost the race for a vacancy, or
// found another write on the key in flight. That write will reach the
// watch, so the caller need not read the key to learn who won; should
// the watch stay silent for recheck, the caller tries again (and reads).
type contendedError struct {
	recheck time.Duration
}

func (e *contendedError) Error() string {
	return "natskvlease: another write on the key came first"
}

// contended reports a contendedError and how long to trust the watch.
func contended(err error) (recheck time.Duration, ok bool) {
	var c *contendedError
	if errors.As(err, &c) {
		return c.recheck, true
	}
	return 0, false
}

// acquire is Acquire. With watched, the caller watches the key: a lost
// race for a vacancy returns a contendedError at once instead of reading
// the key back, so that a crowd of waiters woken by one release costs the
// server one write each and no reads.
func (l *Lease) acquire(ctx context.Context, watched bool) (ok bool, err error) {
	if l.cfg.Metrics != nil { // without metrics, not even the clock is read
		defer func(start time.Time) {
			recorded := err
			if _, lost := contended(err); lost {
				recorded = nil // a race lost to another writer: the key is taken
			}
			l.recordOp(OpAcquire, start, ok, recorded)
		}(time.Now())
	}
	l.opMu.Lock()
	defer l.opMu.Unlock()
	if err := l.prepare(ctx); err != nil {
		return false, err
	}
	if l.IsHeld() {
		return l.renewLocked(ctx)
	}
	return l.acquireLocked(ctx, watched)
}

func (l *Lease) acquireLocked(ctx context.Context, watched bool) (acquired bool, err error) {
	// A write that failed without an answer (timeout, or ctx ended while
	// it was in flight) may still have been applied. If this call gives
	// up, purge such a write, so that the key is not blocked until its
	// TTL by a lease nobody holds.
	var inDoubt bool
	var inDoubtAfter uint64
	defer func() {
		if !acquired && inDoubt {
			l.dropOrphan(inDoubtAfter)
		}
	}()
	b := lazyBackoff{cfg: l.retry}
	// Only a vacancy seen (by a release or the watch) saves the read: a
	// holder seen earlier may have gone since.
	snap, known := l.lastSeen()
	known = known && snap.vacant && snap.revKnown
	var lastErr error
	for attempt := uint(1); attempt <= 2*l.retry.MaxRetries; attempt++ {
		if !known {
			s, err := l.read(ctx)
			if err != nil {
				if !IsTransient(err) || !b.pause(ctx) {
					return false, l.giveUp(ctx, err)
				}
				lastErr = err
				continue
			}
			snap, known = s, true
		}
		ownWrite := inDoubt && !snap.vacant && snap.rev > inDoubtAfter && l.isOwner(snap.value)
		switch acquireStep(snap, ownWrite) {
		case stepTaken:
			l.observe(snap)
			return false, nil
		case stepPurge:
			markerRev, err := l.purgeAttempt(ctx, snap.rev)
			if err == nil {
				if ownWrite {
					inDoubt = false // dealt with
				}
				snap = snapshot{rev: markerRev, vacant: true, revKnown: markerRev != 0}
				known = snap.revKnown
				continue
			}
			known, lastErr = false, err
			if !isRevisionMismatch(err) && !IsTransient(err) {
				return false, l.giveUp(ctx, err)
			}
			continue // the read decides
		}
		// Vacant, and safe to write on: a write on the revision seen makes
		// a new holding, or fails if anyone got there first.
		sentAt := time.Now()
		rev, err := l.writeAttempt(ctx, snap.rev)
		if err == nil {
			l.becomeHolder(rev, snap.rev, sentAt)
			return true, nil
		}
		known = false
		lastErr = err
		if !isRevisionMismatch(err) && (IsTransient(err) || ctx.Err() != nil) && !inDoubt {
			inDoubt, inDoubtAfter = true, snap.rev
		}
		switch {
		case isRevisionMismatch(err) && watched && !inDoubt:
			// Someone wrote first (or is writing: a replicated stream's
			// false conflict means a write on the key is in flight). The
			// watch will show it; what we saw no longer holds. (After an
			// attempt in doubt, the read must tell whether it was ours.)
			l.observe(snapshot{})
			// A replicated stream answers "in flight" (10164) also for a
			// write it has stored but not yet cleared, such as the very
			// marker this attempt was written on; a short recheck bounds
			// what that costs.
			return false, &contendedError{recheck: contentionRecheck(time.Since(sentAt), l.attemptTimeout())}
		case isRevisionMismatch(err):
			// Someone wrote first, or a false conflict: the read decides.
		case IsTransient(err):
			if !b.pause(ctx) {
				return false, l.giveUp(ctx, err)
			}
		default:
			return false, err
		}
	}
	return false, fmt.Errorf("natskvlease: acquire %q gave up: %w", l.cfg.Key, lastErr)
}

// contentionRecheck is how long a waiter that lost the race for a
// vacancy trusts its watch to show the winner's write before it reads
// and tries again: twice the lost write's round trip (took), plus 5ms,
// and never more than one attempt's timeout. A replicated stream also
// refuses a write as "in flight" for a marker it has just stored, so
// the winner may be no one; the bound keeps that from costing a poll.
func contentionRecheck(took, attempt time.Duration) time.Duration {
	return min(2*took+5*time.Millisecond, attempt)
}

// step is what an acquisition does next with the key as last seen.
type step int

const (
	stepWrite step = iota // write the lease on the revision seen
	stepPurge             // purge the revision seen, then write on the purge marker
	stepTaken             // the key is held: give up this attempt
)

// acquireStep decides the next step of an acquisition that sees s.
// ownWrite reports that s is a write of this acquisition whose answer was
// lost.
//
// A write is placed only where the expiry of the revision it is written
// on cannot wipe it: on no message at all, or on a marker the server
// expires by deleting that marker alone (its own expiry markers, and KV
// PURGE markers). A KV DEL marker is purged first. A live value is never
// written over, not even one of our own from an earlier holding: its
// expiry may be due, and it would roll the key up with the write on it.
// An acquisition's own write found after its answer was lost is purged
// and written again, because which attempt it was, and so when its TTL
// began, is not known.
func acquireStep(s snapshot, ownWrite bool) step {
	switch {
	case ownWrite:
		return stepPurge
	case !s.vacant:
		return stepTaken
	case s.deleted:
		return stepPurge
	}
	return stepWrite
}

// dropOrphan purges a write of an acquisition that gave up while the
// write's answer was outstanding. The write expected revision after. A
// purge on after, if it is still the latest, also fences the write should
// it still be in flight: it can no longer apply. Otherwise the key is
// read: a newer value of ours is that write, and is purged. Best effort:
// anything left expires after its TTL.
func (l *Lease) dropOrphan(after uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*l.attemptTimeout())
	defer cancel()
	b := lazyBackoff{cfg: l.retry}
	for expected := after; ; {
		if expected != 0 || l.ops.js != nil {
			markerRev, err := l.purgeAttempt(ctx, expected)
			if err == nil {
				l.logger.Debug("natskvlease: purged the key after an abandoned acquisition", "revision", expected)
				l.observe(snapshot{rev: markerRev, vacant: true, revKnown: markerRev != 0})
				return
			}
		}
		snap, err := l.read(ctx)
		switch {
		case err != nil:
		case !snap.vacant && snap.rev > after && l.isOwner(snap.value):
			expected = snap.rev // our write landed: purge it
			continue
		case snap.rev != after:
			l.observe(snap)
			return // someone else's write, or a vacancy since
		}
		// Unchanged: our write may be in flight (a replicated stream then
		// refuses the purge), or an answer was lost.
		if !b.pause(ctx) {
			return
		}
	}
}

func (l *Lease) giveUp(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.Join(ctx.Err(), err)
	}
	return err
}
