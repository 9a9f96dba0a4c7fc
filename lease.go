package natskvlease

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

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
	ttl      time.Duration // the lease's TTL: its renewals and safety deadline follow it
	expiry   time.Duration // after how long the server expires the key: ttl, or MaxAge
	ttlErr   error         // a TTL the bucket cannot honour; final
	h        holding       // see holding.go
	watchdog *time.Timer
	seen     snapshot // the key's latest state as last observed
	seenOK   bool
	camp     *campaign // the renewal loop, if running
	// ownTicket is the key of this lease's latest queue ticket, which
	// is not counted as another waiter's.
	ownTicket string
	// released is the latest release, for the acquisition that follows
	// it (see yieldsToQueue).
	released releasedState
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
	return l.h.liveAt(time.Now())
}

// Token returns the fencing token of the current holding: the revision
// at which it was acquired. Tokens of successive holdings of a key, by
// any holder, strictly increase. It is 0 when the lease is not held.
func (l *Lease) Token() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.h.liveAt(time.Now()) {
		return 0
	}
	return l.h.token
}

// Deadline returns the local safety deadline of the current holding, or
// the zero time when the lease is not held.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.h.liveAt(time.Now()) {
		return time.Time{}
	}
	return l.h.deadline
}

// Revision returns the key's latest revision as far as this lease knows:
// its own last write (acquire, renewal, or the purge marker of Release)
// or a later revision its reads or watch showed. It is 0 until known.
// After Release, a revision above it means someone wrote the key since.
func (l *Lease) Revision() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seenOK && l.seen.rev > l.h.rev {
		return l.seen.rev
	}
	return l.h.rev
}

// TTL returns the lease's TTL, known after the first operation (0
// before): renewals are scheduled by it and IsHeld turns false at the
// latest nine tenths of it after the last write was sent. With
// per-message TTLs (a KeyValue from KVHelper, or bound with
// BindJetStream) the server expires the key after this TTL too; on an
// unbound KeyValue it expires it after the bucket's MaxAge, which may be
// longer: see ServerExpiry.
func (l *Lease) TTL() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ttl
}

// ServerExpiry returns how long after the last acquire or renew the
// server expires the key if its holder dies, known after the first
// operation (0 before): TTL when the lease writes per-message TTLs, the
// bucket's MaxAge otherwise (an unbound KeyValue, or a bucket without
// per-message TTLs). Another holder can acquire the key only after it,
// so it is the failover time after a crash.
func (l *Lease) ServerExpiry() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiry
}

// Done returns a channel closed when the current holding ends, by loss
// or release, at the latest at the safety deadline. It is closed already
// when the lease is not held. Unlike the callbacks it is signalled
// without delay, so work done under the lease can select on it.
func (l *Lease) Done() <-chan struct{} {
	return l.Context().Done()
}

// Context returns a context that is cancelled the moment the current
// holding ends, at the latest at its safety deadline; when the lease is
// not held it is cancelled already. Its cause (context.Cause) wraps
// ErrLeaseLost when the holding was lost, with what ended it, and
// ErrLeaseNotHeld when it was released or never held. It is the signal
// to stop work done under the lease: derive contexts from it, or pass it
// to context.AfterFunc, which costs no goroutine while the holding lasts.
func (l *Lease) Context() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.ctx == nil {
		return errNeverHeldCtx
	}
	return l.h.ctx
}

// Check reports, before any write, whether the lease can be used: its
// configuration (ErrInvalidConfig) and whether its bucket can enforce its
// TTL (ErrTTLNotSupported). It reads the bucket's policy, once per lease;
// every operation does so at its first use anyway, so calling Check is
// only a way to learn of a problem early. A server that cannot be
// reached is reported too, as a transient error.
func (l *Lease) Check(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	l.opMu.Lock()
	defer l.opMu.Unlock()
	return l.prepare(ctx)
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
	expiry := ttl
	if !policy.msgTTL {
		expiry = policy.maxAge
		if ttl < policy.maxAge {
			l.logger.Warn("natskvlease: the lease renews by its own TTL, but its writes carry no per-message TTL: the server expires a dead holder's key only after the bucket's MaxAge, so failover takes MaxAge; "+policy.fix()+" to fail over after the lease's own TTL",
				"ttl", ttl, "max_age", policy.maxAge, "bucket", l.ops.kv.Bucket())
		} else {
			l.logger.Info("natskvlease: bucket has no usable per-message TTLs; the lease lives for the bucket's MaxAge", "ttl", ttl)
		}
	}
	l.sentTTL, l.ttl, l.expiry, l.ready = sent, ttl, expiry, true
	return nil
}

// attemptTimeout bounds one request (see attemptTimeout).
func (l *Lease) attemptTimeout() time.Duration { return attemptTimeout(l.TTL()) }

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

// purgeAttempt is one revision-checked purge, bounded by the attempt
// timeout.
func (l *Lease) purgeAttempt(ctx context.Context, expected uint64) (uint64, error) {
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	return l.ops.purge(actx, l.cfg.Key, expected, l.sentTTL)
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
