package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Release gives the lease up with one revision-checked purge (a KV PURGE
// marker carrying the lease's TTL, never a DEL: see the README), so that a
// waiter can acquire it at once. IsHeld is false before the purge is
// sent. A renewal loop started by RunCamping is stopped first. Release
// returns ErrLeaseNotHeld if the lease was not held (a second Release
// among others, as a second dlock Lock.Unlock); even then, if a
// revision of ours may still be on the server (the holding lapsed at its
// deadline), it is purged to hasten the handoff.
func (l *Lease) Release(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	l.stopLoop()
	return l.release(ctx)
}

func (l *Lease) release(ctx context.Context) (err error) {
	if l.cfg.Metrics != nil { // without metrics, not even the clock is read
		defer func(start time.Time) {
			if !errors.Is(err, ErrLeaseNotHeld) {
				l.recordOp(OpRelease, start, true, err)
			}
		}(time.Now())
	}
	l.opMu.Lock()
	defer l.opMu.Unlock()
	rev, wasHeld, h := l.endForRelease()
	if rev == 0 {
		return ErrLeaseNotHeld
	}
	perr := l.purgeRevision(ctx, rev)
	if snap, ok := l.lastSeen(); perr == nil && wasHeld && ok && snap.vacant && snap.revKnown {
		l.noteRelease(releasedState{rev: snap.rev, crowded: h.crowded || snap.rev != rev+1, on: h.on})
	}
	switch {
	case !wasHeld:
		return ErrLeaseNotHeld
	case perr != nil:
		// The holding has ended locally; the key expires on its own.
		return fmt.Errorf("natskvlease: release of %q not confirmed (the key expires after its TTL): %w", l.cfg.Key, perr)
	}
	return nil
}

// purgeRevision purges our revision rev, following a renewal of ours whose
// answer was lost to its newer revision.
func (l *Lease) purgeRevision(ctx context.Context, rev uint64) error {
	b := lazyBackoff{cfg: l.retry}
	for {
		markerRev, err := l.purgeAttempt(ctx, rev)
		if err == nil {
			l.observe(snapshot{rev: markerRev, vacant: true, revKnown: markerRev != 0})
			return nil
		}
		if !isRevisionMismatch(err) && !IsTransient(err) {
			return err
		}
		snap, rerr := l.read(ctx)
		switch {
		case rerr != nil:
		case !snap.vacant && snap.rev > rev && l.isOwner(snap.value):
			rev = snap.rev // a renewal whose answer was lost: delete that
			continue
		case snap.vacant || snap.rev != rev:
			l.observe(snap)
			return nil // deleted by an earlier attempt, expired, or taken
		}
		if !b.pause(ctx) {
			return l.giveUp(ctx, err)
		}
	}
}

func (l *Lease) releaseAfterCancel() {
	ctx, cancel := context.WithTimeout(context.Background(), l.releaseTimeout())
	defer cancel()
	if err := l.release(ctx); err != nil && !errors.Is(err, ErrLeaseNotHeld) {
		l.logger.Warn("natskvlease: release on context end", "error", err)
	}
}

func (l *Lease) releaseTimeout() time.Duration {
	if ttl := l.TTL(); ttl > 0 {
		return ttl
	}
	return DefaultBucketTTL
}
