package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// holding is what a Lease believes about its hold on the key. It is
// guarded by Lease.mu, and changed only by the functions in this file.
type holding struct {
	held     bool
	gen      uint64 // counts holdings, so that a renewal never extends a later one
	token    uint64
	rev      uint64    // our latest revision; kept after a loss by deadline so Release can clean up
	sentAt   time.Time // when the write that set deadline was sent
	deadline time.Time
	// crowded: another write reached the stream between this holding's
	// own writes, or before its first one on the vacancy it was written
	// on (see yieldsToQueue).
	crowded bool
	on      uint64          // the revision of the vacancy the holding was written on
	ctx     context.Context // cancelled, with a cause, when the holding ends
	cancel  context.CancelCauseFunc
}

// liveAt is the safety rule, the one test of "held now" that every
// caller uses: a holding counts until it ends or its safety deadline
// passes, whichever comes first.
func (h *holding) liveAt(now time.Time) bool {
	return h.held && now.Before(h.deadline)
}

// safetyDeadline is when a write sent at sentAt stops counting: the TTL
// the server applies, less a tenth, the margin for clock-rate drift and
// scheduling. The server counts the TTL from when it stored the write,
// which is after sentAt.
func safetyDeadline(sentAt time.Time, ttl time.Duration) time.Time {
	return sentAt.Add(ttl - ttl/10)
}

// attemptTimeout bounds one request, so that a request lost on a dead
// connection is retried (or given up) well within a TTL.
func attemptTimeout(ttl time.Duration) time.Duration {
	return min(max(ttl/4, 250*time.Millisecond), 2*time.Second)
}

// renewAfter is the time from a write's send time to the next renewal:
// ratio × TTL, but never later than leaves room for two attempts, each
// bounded by attemptTimeout, before the safety deadline. Ratios above
// about 0.4 (less for TTLs under ten seconds) are so capped; a ratio of
// 1 would otherwise renew after the holding had ended.
func renewAfter(ttl time.Duration, ratio float64) time.Duration {
	latest := ttl - ttl/10 - 2*attemptTimeout(ttl)
	return max(min(time.Duration(float64(ttl)*ratio), latest), 0)
}

// Causes of a holding's end, for Context's cause. A loss wraps
// ErrLeaseLost (and what caused it); a release wraps ErrLeaseNotHeld.
var (
	errReleased     = fmt.Errorf("%w: released", ErrLeaseNotHeld)
	errDeadline     = fmt.Errorf("%w: safety deadline passed", ErrLeaseLost)
	errTakenOver    = fmt.Errorf("%w: key taken over, deleted or expired", ErrLeaseLost)
	errNeverHeldCtx = func() context.Context {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrLeaseNotHeld)
		return ctx
	}()
)

// current returns the current holding, ending it first if its deadline
// has passed.
func (l *Lease) current() (h holding, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.held && !l.h.liveAt(time.Now()) {
		l.endLocked(false, errDeadline)
	}
	return l.h, l.h.held
}

// becomeHolder records a new holding, written at rev on the vacancy at
// revision on and sent at sentAt.
func (l *Lease) becomeHolder(rev, on uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithCancelCause(context.Background())
	l.h = holding{
		held:     true,
		gen:      l.h.gen + 1,
		token:    rev,
		rev:      rev,
		sentAt:   sentAt,
		deadline: safetyDeadline(sentAt, l.ttl),
		crowded:  rev != on+1,
		on:       on,
		ctx:      ctx,
		cancel:   cancel,
	}
	l.seenOK = false
	l.armWatchdog()
	l.record(Event{Kind: EventAcquired, Token: rev})
	l.logger.Debug("natskvlease: acquired", "token", rev)
	l.callbacks.post(l.cfg.Callbacks.OnAcquired)
}

// extend records a renewal of holding gen, written at rev and sent at
// sentAt. A holding that has ended meanwhile stays ended.
func (l *Lease) extend(gen, rev uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.h.held || gen != l.h.gen {
		return
	}
	l.h.crowded = l.h.crowded || rev != l.h.rev+1
	l.h.rev = rev
	l.record(Event{Kind: EventRenewed, Left: time.Until(l.h.deadline)})
	if d := safetyDeadline(sentAt, l.ttl); d.After(l.h.deadline) {
		l.h.deadline, l.h.sentAt = d, sentAt
	}
	l.armWatchdog()
	l.callbacks.post(l.cfg.Callbacks.OnRenewed)
}

// lose ends holding gen as lost, for cause (wrapping ErrLeaseLost).
func (l *Lease) lose(gen uint64, cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.held && gen == l.h.gen {
		l.endLocked(false, cause)
	}
}

// endForRelease ends the holding as released and returns the revision
// to purge (0: nothing of ours may be on the server), and what the
// holding was.
func (l *Lease) endForRelease() (rev uint64, wasHeld bool, h holding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.held && !l.h.liveAt(time.Now()) {
		l.endLocked(false, errDeadline)
	}
	wasHeld = l.h.held
	if wasHeld {
		l.endLocked(true, errReleased)
	}
	h = l.h
	rev, l.h.rev = l.h.rev, 0
	return rev, wasHeld, h
}

// endLocked ends the current holding; the one place where a holding ends,
// so OnLost or OnReleased is posted exactly once for it.
func (l *Lease) endLocked(released bool, cause error) {
	l.h.held = false
	l.h.token = 0
	l.h.cancel(cause)
	if l.watchdog != nil {
		l.watchdog.Stop()
	}
	if released {
		l.record(Event{Kind: EventReleased})
		l.logger.Debug("natskvlease: released")
		l.callbacks.post(l.cfg.Callbacks.OnReleased)
		return
	}
	l.record(Event{Kind: EventLost, Cause: causeOf(cause)})
	l.logger.Warn("natskvlease: lease lost", "cause", cause)
	if l.seenOK && l.seen.rev > l.h.rev {
		l.h.rev = 0 // taken or purged: nothing of ours left to purge
	}
	l.callbacks.post(l.cfg.Callbacks.OnLost)
}

// armWatchdog makes the holding end at its deadline even while a renewal
// is blocked in a request, so OnLost and Done never come late.
func (l *Lease) armWatchdog() {
	d := time.Until(l.h.deadline)
	if l.watchdog == nil {
		l.watchdog = time.AfterFunc(d, l.expire)
		return
	}
	l.watchdog.Reset(d)
}

func (l *Lease) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.h.held {
		return
	}
	if d := time.Until(l.h.deadline); d > 0 {
		l.watchdog.Reset(d) // extended since this firing was scheduled
		return
	}
	l.endLocked(false, errDeadline)
}

// observe records the key's state as seen by a read or a watch, if it is
// newer than what was known.
func (l *Lease) observe(s snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !s.revKnown {
		l.seenOK = false
		return
	}
	if !l.seenOK || s.rev >= l.seen.rev {
		l.seen, l.seenOK = s, true
	}
}

func (l *Lease) lastSeen() (snapshot, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen, l.seenOK
}

// lossCause returns the cause to record for a renewal that ended the
// holding with err.
func lossCause(err error) error {
	if err == nil {
		return errTakenOver
	}
	if errors.Is(err, ErrLeaseLost) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrLeaseLost, err)
}
