package natskvlease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
)

// LeaseCallbacks are told of a lease's changes. Each may be nil.
//
// Callbacks run one at a time, in event order (OnAcquired, OnRenewed...,
// then OnLost or OnReleased), on a goroutine the Lease starts for them:
// never the caller's goroutine and never the renewal loop's. A slow
// callback therefore delays the callbacks after it, never a renewal; and
// by the time a callback runs the state it reports may have moved on
// (check IsHeld, or use Done for a signal with no delay).
type LeaseCallbacks struct {
	// OnAcquired is called when the lease is acquired.
	OnAcquired func()
	// OnLost is called once per holding that ends without Release: a
	// renewal found another owner, or the safety deadline passed.
	OnLost func()
	// OnRenewed is called after each successful renewal.
	OnRenewed func()
	// OnReleased is called once per holding ended by Release,
	// StopCamping, or the end of RunCamping's context.
	OnReleased func()
}

// LeaseConfig configures a Lease.
type LeaseConfig struct {
	// Key is the key of the lease in the bucket: letters, digits and
	// -/_=. with non-empty dot-separated tokens.
	Key string
	// TTL is how long the lease lives on the server after the last
	// acquire or renew. Zero means the bucket's MaxAge, or
	// DefaultBucketTTL if it has none. It must be at least one second,
	// and no more than the bucket's MaxAge; the server counts per-message
	// TTLs in whole seconds, so a fraction is rounded up.
	TTL time.Duration
	// RenewRatio is the fraction of TTL between renewals, in (0, 1). Zero
	// means 1/3.
	RenewRatio float64
	// Value is stored under Key while the lease is held. It identifies
	// the holder and must be unique to it: two leases with the same Value
	// on one key are taken for the same holder.
	Value []byte
	// IsOwner reports whether a stored value is this holder's. Nil means
	// bytes.Equal with Value.
	IsOwner func(value []byte) bool
	// Callbacks are told of changes; see LeaseCallbacks.
	Callbacks LeaseCallbacks
	// Logger receives the lease's logs. Nil discards them.
	Logger *slog.Logger
}

const defaultRenewRatio = 1.0 / 3

func (c LeaseConfig) validate(kv jetstream.KeyValue) error {
	if kv == nil {
		return configError("KeyValue", "is nil")
	}
	if err := validateKey("LeaseConfig.Key", c.Key); err != nil {
		return err
	}
	if len(c.Value) == 0 {
		return configError("LeaseConfig.Value", "is empty; it identifies the holder")
	}
	if c.TTL < 0 {
		return configError("LeaseConfig.TTL", "%v is negative", c.TTL)
	}
	if c.RenewRatio < 0 || c.RenewRatio >= 1 || c.RenewRatio != c.RenewRatio {
		return configError("LeaseConfig.RenewRatio", "%v is outside (0, 1)", c.RenewRatio)
	}
	return nil
}

// Lease is a revision-checked lease on one key of a KeyValue bucket.
//
// The guarantee: while IsHeld reports true, no other Lease on the same
// key can have acquired it. IsHeld is checked against a local safety
// deadline at every call: the time the last successful acquire or renew
// was sent, plus the TTL the server applies, less a tenth of it. The
// server deletes the key once the TTL has passed since it stored that
// write, so a holder stops believing it holds before anyone else can
// acquire. This assumes the client's and server's clocks run at nearly
// the same rate (they need not agree on the time).
//
// Every write is one round trip and carries the revision it expects, so a
// stale holder can never overwrite a newer one. Token returns the
// revision at which the holding began: a fencing token that only grows.
//
// A Lease is safe for concurrent use. Its network operations are
// serialized.
type Lease struct {
	ops       *KVOps
	cfg       LeaseConfig
	logger    *slog.Logger
	cfgErr    error
	retry     RetryConfig
	callbacks dispatcher

	opMu sync.Mutex // serializes network operations

	mu       sync.Mutex // guards the fields below; never held across I/O
	value    []byte
	ready    bool          // sentTTL and ttl are known
	sentTTL  time.Duration // per-message TTL written; 0 when the bucket's MaxAge applies
	ttl      time.Duration // the TTL the server applies
	ttlErr   error         // a TTL the bucket cannot honour; final
	held     bool
	gen      uint64 // counts holdings
	token    uint64
	rev      uint64 // our latest revision; kept after a loss by deadline so Release can clean up
	deadline time.Time
	done     chan struct{} // closed when the current holding ends
	watchdog *time.Timer
	seen     snapshot // the key's latest state as last observed
	seenOK   bool
	camp     *campaign
}

// NewLease returns a lease for cfg.Key in kv. Nothing is sent until the
// first call. An invalid configuration is reported, wrapping
// ErrInvalidConfig, by every method that returns an error.
func NewLease(kv jetstream.KeyValue, cfg LeaseConfig) *Lease {
	l := &Lease{cfg: cfg, logger: orDiscard(cfg.Logger), retry: DefaultRetryConfig()}
	l.logger = l.logger.With("key", cfg.Key)
	l.callbacks.logger = l.logger
	l.cfgErr = cfg.validate(kv)
	if l.cfgErr != nil {
		return l
	}
	l.ops = NewKVOps(kv, cfg.Logger)
	l.value = bytes.Clone(cfg.Value)
	if l.cfg.RenewRatio == 0 {
		l.cfg.RenewRatio = defaultRenewRatio
	}
	return l
}

// GetOps returns the KeyValue operations the lease uses (nil if the
// configuration is invalid).
func (l *Lease) GetOps() *KVOps { return l.ops }

// UpdateValue changes the value written by later acquires and renewals.
// An empty value is ignored: it would no longer identify the holder.
func (l *Lease) UpdateValue(val []byte) {
	if len(val) == 0 {
		l.logger.Warn("natskvlease: UpdateValue with an empty value ignored")
		return
	}
	l.mu.Lock()
	l.value = bytes.Clone(val)
	l.mu.Unlock()
}

// IsHeld reports whether the lease is held now: acquired, not released,
// and its safety deadline not passed. It does no I/O.
func (l *Lease) IsHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held && time.Now().Before(l.deadline)
}

// Token returns the fencing token of the current holding: the revision
// at which it was acquired. Tokens of successive holdings of a key, by
// any holder, strictly increase. It is 0 when the lease is not held.
func (l *Lease) Token() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held || !time.Now().Before(l.deadline) {
		return 0
	}
	return l.token
}

// Deadline returns the local safety deadline of the current holding, or
// the zero time when the lease is not held.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held || !time.Now().Before(l.deadline) {
		return time.Time{}
	}
	return l.deadline
}

// Revision returns the key's latest revision as far as this lease knows:
// its own last write (acquire, renewal, or the purge marker of Release)
// or a later revision its reads or watch showed. It is 0 until known.
// After Release, a revision above it means someone wrote the key since.
func (l *Lease) Revision() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seenOK && l.seen.rev > l.rev {
		return l.seen.rev
	}
	return l.rev
}

// TTL returns the TTL the server applies to the lease, known after the
// first operation (0 before).
func (l *Lease) TTL() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ttl
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done returns a channel closed when the current holding ends, by loss
// or release, at the latest at the safety deadline. It is closed already
// when the lease is not held. Unlike the callbacks it is signalled
// without delay, so work done under the lease can select on it.
func (l *Lease) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return closedChan
	}
	return l.done
}

// Acquire tries once to acquire the lease and reports whether it holds
// it. It returns (false, nil) when another holder has the key. Transient
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
func (l *Lease) acquire(ctx context.Context, watched bool) (bool, error) {
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

// prepare learns, once, what TTL the bucket can enforce.
func (l *Lease) prepare(ctx context.Context) error {
	l.mu.Lock()
	ready, ttlErr := l.ready, l.ttlErr
	l.mu.Unlock()
	if ttlErr != nil {
		return ttlErr
	}
	if ready {
		return nil
	}
	policy, err := readBucketPolicy(ctx, l.ops.kv)
	if err != nil {
		return err
	}
	sent, ttl, err := policy.leaseTTL(l.ops.kv.Bucket(), l.cfg.TTL)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.ttlErr = err
		return err
	}
	if !policy.msgTTL {
		l.logger.Info("natskvlease: bucket has no usable per-message TTLs; the lease lives for the bucket's MaxAge", "ttl", ttl)
	}
	l.sentTTL, l.ttl, l.ready = sent, ttl, true
	return nil
}

// safetyDeadline is when a write sent at sentAt stops counting: the TTL
// less a margin of a tenth for clock-rate drift and scheduling.
func (l *Lease) safetyDeadline(sentAt time.Time) time.Time {
	return sentAt.Add(l.ttl - l.ttl/10)
}

// attemptTimeout bounds one request, so that a request lost on a dead
// connection is retried (or given up) well within a TTL.
func (l *Lease) attemptTimeout() time.Duration {
	return min(max(l.ttl/4, 250*time.Millisecond), 2*time.Second)
}

func (l *Lease) isOwner(value []byte) bool {
	if l.cfg.IsOwner != nil {
		return l.cfg.IsOwner(value)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Equal(value, l.value)
}

func (l *Lease) currentValue() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.value
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
			l.becomeHolder(rev, sentAt)
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
			took := time.Since(sentAt)
			return false, &contendedError{recheck: min(2*took+5*time.Millisecond, l.attemptTimeout())}
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

// purgeAttempt is one revision-checked purge, bounded by the attempt
// timeout.
func (l *Lease) purgeAttempt(ctx context.Context, expected uint64) (uint64, error) {
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	return l.ops.purge(actx, l.cfg.Key, expected, l.sentTTL)
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

// lazyBackoff is a backoff built at its first pause, so that an
// operation that succeeds at once pays nothing for it.
type lazyBackoff struct {
	cfg RetryConfig
	b   *backoff.ExponentialBackOff
}

// pause waits for the next backoff interval; false means stop trying.
func (lb *lazyBackoff) pause(ctx context.Context) bool {
	if lb.b == nil {
		lb.b = newBackoff(lb.cfg)
	}
	d := lb.b.NextBackOff()
	return d != backoff.Stop && sleepCtx(ctx, d)
}

func (l *Lease) read(ctx context.Context) (snapshot, error) {
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	return l.ops.latest(actx, l.cfg.Key)
}

// writeAttempt is one write, bounded by the attempt timeout.
func (l *Lease) writeAttempt(ctx context.Context, expected uint64) (uint64, error) {
	return l.writeBy(ctx, expected, time.Now().Add(l.attemptTimeout()))
}

// writeBy is one write that must be answered by the given time.
func (l *Lease) writeBy(ctx context.Context, expected uint64, by time.Time) (uint64, error) {
	actx, cancel := context.WithDeadline(ctx, by)
	defer cancel()
	return l.ops.write(actx, l.cfg.Key, l.currentValue(), expected, l.sentTTL)
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

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
	if g, _, _, ok := l.holding(); !ok || g != gen {
		return false, ErrLeaseNotHeld
	}
	return l.renewLocked(ctx)
}

func (l *Lease) renewLocked(ctx context.Context) (bool, error) {
	gen, rev, deadline, ok := l.holding()
	if !ok {
		return false, ErrLeaseNotHeld
	}
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
			l.lose(gen, err)
			return false, fmt.Errorf("%w: renewal refused: %w", ErrLeaseNotHeld, err)
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
			l.lose(gen, nil)
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
	l.lose(gen, lastErr)
	return false, fmt.Errorf("%w: safety deadline passed while renewing: %w", ErrLeaseNotHeld, lastErr)
}

// Release gives the lease up with one revision-checked purge (a KV PURGE
// marker carrying the lease's TTL, never a DEL: see the README), so that a
// waiter can acquire it at once. IsHeld is false before the purge is
// sent. A renewal loop started by RunCamping is stopped first. Release
// returns ErrLeaseNotHeld if the lease was not held; even then, if a
// revision of ours may still be on the server (the holding lapsed at its
// deadline), it is purged to hasten the handoff.
func (l *Lease) Release(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	l.stopLoop()
	return l.release(ctx)
}

func (l *Lease) release(ctx context.Context) error {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	rev, wasHeld := l.endForRelease()
	if rev == 0 {
		return ErrLeaseNotHeld
	}
	err := l.deleteRevision(ctx, rev)
	switch {
	case !wasHeld:
		return ErrLeaseNotHeld
	case err != nil:
		// The holding has ended locally; the key expires on its own.
		return fmt.Errorf("natskvlease: release of %q not confirmed (the key expires after its TTL): %w", l.cfg.Key, err)
	}
	return nil
}

func (l *Lease) deleteRevision(ctx context.Context, rev uint64) error {
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

// holding returns the current holding, ending it first if its deadline
// has passed.
func (l *Lease) holding() (gen, rev uint64, deadline time.Time, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && !time.Now().Before(l.deadline) {
		l.endLocked(false, nil)
	}
	return l.gen, l.rev, l.deadline, l.held
}

func (l *Lease) becomeHolder(rev uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	l.held, l.token, l.rev = true, rev, rev
	l.deadline = l.safetyDeadline(sentAt)
	l.done = make(chan struct{})
	l.seenOK = false
	l.armWatchdog()
	l.logger.Debug("natskvlease: acquired", "token", rev)
	l.callbacks.post(l.cfg.Callbacks.OnAcquired)
}

func (l *Lease) extend(gen, rev uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held || gen != l.gen {
		return
	}
	l.rev = rev
	if d := l.safetyDeadline(sentAt); d.After(l.deadline) {
		l.deadline = d
	}
	l.armWatchdog()
	l.callbacks.post(l.cfg.Callbacks.OnRenewed)
}

func (l *Lease) lose(gen uint64, cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && gen == l.gen {
		l.endLocked(false, cause)
	}
}

// endForRelease ends the holding as released and returns the revision
// to delete (0: nothing of ours may be on the server).
func (l *Lease) endForRelease() (rev uint64, wasHeld bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && !time.Now().Before(l.deadline) {
		l.endLocked(false, nil)
	}
	wasHeld = l.held
	if wasHeld {
		l.endLocked(true, nil)
	}
	rev, l.rev = l.rev, 0
	return rev, wasHeld
}

// endLocked ends the current holding; the one place where a holding ends,
// so OnLost or OnReleased is posted exactly once for it.
func (l *Lease) endLocked(released bool, cause error) {
	l.held = false
	l.token = 0
	close(l.done)
	if l.watchdog != nil {
		l.watchdog.Stop()
	}
	if released {
		l.logger.Debug("natskvlease: released")
		l.callbacks.post(l.cfg.Callbacks.OnReleased)
		return
	}
	if cause != nil {
		l.logger.Warn("natskvlease: lease lost", "error", cause)
	} else {
		l.logger.Info("natskvlease: lease lost")
	}
	if l.seenOK && l.seen.rev > l.rev {
		l.rev = 0 // taken or deleted: nothing of ours left to delete
	}
	l.callbacks.post(l.cfg.Callbacks.OnLost)
}

// armWatchdog makes the holding end at its deadline even while a renewal
// is blocked in a request, so OnLost and Done never come late.
func (l *Lease) armWatchdog() {
	d := time.Until(l.deadline)
	if l.watchdog == nil {
		l.watchdog = time.AfterFunc(d, l.expire)
		return
	}
	l.watchdog.Reset(d)
}

func (l *Lease) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return
	}
	if d := time.Until(l.deadline); d > 0 {
		l.watchdog.Reset(d) // extended since this firing was scheduled
		return
	}
	l.endLocked(false, errors.New("safety deadline passed"))
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

// RunCamping acquires the lease once and, if that succeeds, renews it in
// the background every TTL*RenewRatio until ctx ends, StopCamping or
// Release is called (each of which releases it), or it is lost (OnLost).
// It reports whether the lease was acquired. A RunCamping call while an
// earlier loop runs stops that loop (without releasing) and renews under
// the new ctx instead.
//
// The renewal loop holds no goroutine while it waits: each renewal runs
// on a timer's goroutine. Many leases in one process therefore cost a
// timer each, not a goroutine each.
func (l *Lease) RunCamping(ctx context.Context) (bool, error) {
	if l.cfgErr != nil {
		return false, l.cfgErr
	}
	l.stopLoop()
	ok, err := l.Acquire(ctx)
	if !ok {
		return false, err
	}
	gen, _, _, held := l.holding()
	if !held {
		return false, nil // lost at once: the deadline passed meanwhile
	}
	loopCtx, cancel := context.WithCancel(ctx)
	c := &campaign{
		lease:    l,
		parent:   ctx,
		ctx:      loopCtx,
		cancel:   cancel,
		gen:      gen,
		interval: time.Duration(float64(l.TTL()) * l.cfg.RenewRatio),
		done:     make(chan struct{}),
	}
	l.mu.Lock()
	old := l.camp
	l.camp = c
	l.mu.Unlock()
	if old != nil { // a concurrent RunCamping started one meanwhile
		old.stop()
	}
	c.start()
	return true, nil
}

// campaign is a renewal loop started by RunCamping: a timer that renews
// one holding, and a callback on the end of its context.
type campaign struct {
	lease    *Lease
	parent   context.Context // the caller's: its end releases the lease
	ctx      context.Context // parent, or ended by stop
	cancel   context.CancelFunc
	gen      uint64 // the holding renewed; a later one is not this loop's
	interval time.Duration

	mu     sync.Mutex
	timer  *time.Timer
	unhook func() bool // removes the callback on the context
	ended  bool
	done   chan struct{} // closed once ended (and released, if due)
}

func (c *campaign) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timer = time.AfterFunc(c.interval, c.renew)
	c.unhook = context.AfterFunc(c.ctx, c.onContextEnd)
}

// renew runs on the timer's goroutine: one renewal, then the next timer.
func (c *campaign) renew() {
	c.mu.Lock()
	ended := c.ended
	c.mu.Unlock()
	if ended {
		return
	}
	ok, err := c.lease.renewHolding(c.ctx, c.gen)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ended || c.ctx.Err() != nil:
		// onContextEnd ends the loop.
	case !ok:
		c.lease.logger.Debug("natskvlease: renewal loop ends", "error", err)
		c.ended = true
		c.unhook()
		close(c.done)
	default:
		c.timer.Reset(c.interval)
	}
}

// onContextEnd runs on a goroutine of its own when the loop's context
// ends: by stop, or by the caller's context, which releases the lease.
func (c *campaign) onContextEnd() {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	c.timer.Stop()
	c.mu.Unlock()
	if c.parent.Err() != nil {
		// After a renewal in flight, which the ended context cuts short.
		c.lease.releaseAfterCancel()
	}
	close(c.done)
}

// stop ends the loop without releasing (unless the caller's context has
// ended too) and waits for it.
func (c *campaign) stop() {
	c.cancel()
	<-c.done
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

// StopCamping stops the renewal loop started by RunCamping and releases
// the lease, waiting at most one TTL for the server's answer.
func (l *Lease) StopCamping() {
	if l.cfgErr != nil {
		return
	}
	l.stopLoop()
	l.releaseAfterCancel()
}

// stopLoop stops the renewal loop, if any, and waits for it to end.
func (l *Lease) stopLoop() {
	l.mu.Lock()
	c := l.camp
	l.camp = nil
	l.mu.Unlock()
	if c != nil {
		c.stop()
	}
}

// dispatcher runs callbacks one at a time, in the order posted, on a
// goroutine that exists only while there are callbacks to run.
type dispatcher struct {
	logger  *slog.Logger
	mu      sync.Mutex
	queue   []func()
	running bool
}

func (d *dispatcher) post(f func()) {
	if f == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = append(d.queue, f)
	if !d.running {
		d.running = true
		go d.run()
	}
}

func (d *dispatcher) run() {
	for {
		d.mu.Lock()
		if len(d.queue) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		f := d.queue[0]
		d.queue = d.queue[1:]
		d.mu.Unlock()
		d.call(f)
	}
}

func (d *dispatcher) call(f func()) {
	defer func() {
		if r := recover(); r != nil {
			d.logger.Error("natskvlease: callback panicked", "panic", r)
		}
	}()
	f()
}

// AcquireWait blocks until the lease is acquired or ctx ends. It watches
// the key, so a release or expiry by the current holder wakes it at once
// and the acquisition is one write on the marker's revision. Should the
// watch fall silent, it polls: half a TTL (with jitter) after the last
// sign of life. It returns nil once the lease is held, ctx's error if ctx
// ends first, and at once any error that retrying cannot cure (an
// invalid configuration, a TTL the bucket cannot honour).
//
// When many waiters are woken by one release, each sends one write and
// the losers learn of the winner from the watch, without reading the key.
func (l *Lease) AcquireWait(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	var w *keyWatch
	defer func() {
		// Stopping deletes the watch's consumer: a round trip the caller,
		// who holds the lease now, need not wait for.
		if w != nil {
			go w.stop()
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.updates():
			if !ok {
				w.stop()
				w = nil // closed under us: watch again at the next poll
				continue
			}
			if e == nil {
				continue // the end of the initial values
			}
			l.observe(snapshotOf(e))
			if l.othersWrite(e) {
				// Held by another, and the watch is alive.
				poll.Reset(pollInterval(l.TTL()))
				continue
			}
		case <-poll.C:
			if w == nil {
				w = l.watch(ctx)
			}
		}
		ok, err := l.acquire(ctx, w != nil)
		recheck, lost := contended(err)
		switch {
		case ok:
			return nil
		case lost:
			// The other write is on its way to the watch, which resets
			// the poll; look again soon in case it never lands.
			poll.Reset(recheck)
			continue
		case errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrTTLNotSupported):
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

// watch starts a watch on the key, or returns nil (and the caller polls)
// if the server cannot be reached. Starting it honours ctx; the watch
// then lasts until stop.
func (l *Lease) watch(ctx context.Context) *keyWatch {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopStarting := context.AfterFunc(ctx, cancel)
	w, err := l.ops.kv.Watch(wctx, l.cfg.Key)
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

// stopAfterHandoff stops the watch once it shows someone else's write
// (a successor took the key), or after at most wait. Run after a release,
// it keeps the deletion of the watch's consumer out of the successor's
// way.
func (k *keyWatch) stopAfterHandoff(l *Lease, wait time.Duration) {
	if k == nil {
		return
	}
	defer k.stop()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case e, ok := <-k.w.Updates():
			if !ok || e != nil && l.othersWrite(e) {
				return
			}
		case <-t.C:
			return
		}
	}
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
