package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Renew extends the lease with one revision-checked write on the
// revision it holds. It returns true when renewed. It returns false when
// the lease is no longer held: with a nil error when the key was found
// taken, deleted or expired, with an error wrapping ErrLeaseNotHeld when
// it was not held to begin with or the safety deadline passed before the
// server could be reached. A write whose answer was lost is resolved by
// reading the key back; a false conflict (a replicated stream answering
// "wrong last sequence" while the revision is unchanged) is retried.
// Renew never runs past the safety deadline. If ctx ends first, Renew
// returns ctx's error and the holding lasts until its deadline.
func (l *Lease) Renew(ctx context.Context) (bool, error) {
	if l.cfgErr != nil {
		return false, l.cfgErr
	}
	l.opMu.Lock()
	defer l.opMu.Unlock()
	return l.renewLocked(ctx)
}

// renewHolding renews the holding numbered gen, and no later one.
func (l *Lease) renewHolding(ctx context.Context, gen uint64) (bool, error) {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	if h, ok := l.current(); !ok || h.gen != gen {
		return false, ErrLeaseNotHeld
	}
	return l.renewLocked(ctx)
}

func (l *Lease) renewLocked(ctx context.Context) (renewed bool, err error) {
	if l.cfg.Metrics != nil { // without metrics, not even the clock is read
		defer func(start time.Time) { l.recordOp(OpRenew, start, renewed, err) }(time.Now())
	}
	h, ok := l.current()
	if !ok {
		return false, ErrLeaseNotHeld
	}
	gen, rev, deadline := h.gen, h.rev, h.deadline
	// The common case is one write that succeeds: give it one timer, the
	// earlier of the attempt timeout and the safety deadline, and build
	// the retry machinery only if it fails.
	sentAt := time.Now()
	newRev, err := l.writeBy(ctx, rev, earliest(deadline, sentAt.Add(l.attemptTimeout())))
	if err == nil {
		l.extend(gen, newRev, sentAt)
		return true, nil
	}
	return l.renewRetry(ctx, gen, rev, deadline, sentAt, err)
}

// renewRetry resolves a renewal whose first write, sent at firstSent,
// failed with err: it reads the key back and tries again until the
// safety deadline.
func (l *Lease) renewRetry(ctx context.Context, gen, rev uint64, deadline, firstSent time.Time, err error) (bool, error) {
	opCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	b := lazyBackoff{cfg: RetryConfig{MaxElapsedTime: time.Until(deadline)}.withDefaults()}
	lastErr := err
	for opCtx.Err() == nil { // else the caller gave up, or the deadline passed: decided below
		if !isRevisionMismatch(err) && !IsTransient(err) {
			cause := lossCause(fmt.Errorf("renewal refused: %w", err))
			l.lose(gen, cause)
			return false, fmt.Errorf("%w: %w", ErrLeaseNotHeld, cause)
		}
		snap, rerr := l.read(opCtx)
		switch {
		case rerr != nil:
			lastErr = rerr
		case snap.rev > rev && !snap.vacant && l.isOwner(snap.value):
			// An earlier attempt was applied and its answer lost. It was
			// sent no earlier than firstSent.
			l.extend(gen, snap.rev, firstSent)
			return true, nil
		case snap.vacant || snap.rev > rev:
			l.observe(snap)
			l.lose(gen, errTakenOver)
			return false, nil
		}
		// Unchanged (a false conflict, or a write that never arrived),
		// or unknown: try again while the deadline allows.
		if !b.pause(opCtx) {
			break
		}
		sentAt := time.Now()
		var newRev uint64
		newRev, err = l.writeAttempt(opCtx, rev)
		if err == nil {
			l.extend(gen, newRev, sentAt)
			return true, nil
		}
		lastErr = err
	}
	if ctx.Err() != nil && time.Now().Before(deadline) {
		return false, errors.Join(ctx.Err(), lastErr)
	}
	cause := fmt.Errorf("%w while renewing: %w", errDeadline, lastErr)
	l.lose(gen, cause)
	return false, fmt.Errorf("%w: %w", ErrLeaseNotHeld, cause)
}
