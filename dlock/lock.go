package dlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natskvlease/natskvlease"
)

// Lock is one holding of a key, renewed in the background by its lease
// until Unlock or until it is lost. A held Lock costs no goroutine: its
// lease renews it on a timer and reports a loss through its context.
// Its methods are safe for concurrent use.
type Lock struct {
	client *Client
	lease  *natskvlease.Lease
	slot   *leaseSlot
	key    string
	owner  string
	token  uint64
	logger *slog.Logger

	ctx        context.Context // ends when the holding ends
	cancel     context.CancelCauseFunc
	lost       chan struct{}
	lostOnce   sync.Once
	unhookLoss func() bool // stops the loss callback on the lease's context

	mu       sync.Mutex // serializes Unlock
	unlocked bool
}

// errLostAtOnce: the holding ended between acquisition and its handover
// to a Lock (a deadline passed in between). Lock simply waits again.
var errLostAtOnce = errors.New("lock lost at once after acquiring")

// Lock blocks until it holds key or ctx ends, and returns the held lock,
// renewed in the background until Unlock. Waiting is driven by a watch on
// the key, so a release is picked up within milliseconds and an expiry as
// soon as the server writes its marker; should the watch fall silent, it
// polls half a TTL after the watch last showed the key's holder. When ctx
// ends first, the error wraps ctx's error; an invalid key gives one
// wrapping natskvlease.ErrInvalidConfig; a closed client one wrapping
// natskvlease.ErrProviderClosed.
//
// Lock calls on one key through one Client wait on the server one at a
// time; the others queue in the process, first come first served. So
// many goroutines after one key cost the server one watch per Client,
// and a release wakes one of them per Client rather than all.
func (c *Client) Lock(ctx context.Context, key string) (*Lock, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	ctx, end, err := c.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("dlock: lock %q: %w", key, err)
	}
	defer end()
	for {
		pass, err := c.turns.Wait(ctx, key)
		if err != nil {
			return nil, c.fail("lock", key, err)
		}
		owner := newOwner()
		slot := c.leaseFor(key, owner)
		err = slot.lease.AcquireWait(ctx)
		pass() // the next caller watches while this one holds
		if err != nil {
			return nil, c.fail("lock", key, err)
		}
		l, err := c.hold(slot, key, owner)
		if !errors.Is(err, errLostAtOnce) {
			return l, err
		}
	}
}

// TryLock makes one attempt to take key. When another holder has it,
// the error is a *LockedError wrapping ErrLocked and naming that holder;
// when that holder is a Lock of this same Client, the error says so
// (LockedError.ByThisClient): a Client's locks are not reentrant.
// Other errors are as for Lock.
func (c *Client) TryLock(ctx context.Context, key string) (*Lock, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	ctx, end, err := c.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("dlock: trylock %q: %w", key, err)
	}
	defer end()
	owner := newOwner()
	slot := c.leaseFor(key, owner)
	ok, err := slot.lease.Acquire(ctx)
	switch {
	case err != nil:
		return nil, c.fail("trylock", key, err)
	case !ok:
		c.keepIdle(key, slot) // it knows who holds the key now
		return nil, c.lockedError(ctx, key)
	}
	l, err := c.hold(slot, key, owner)
	if errors.Is(err, errLostAtOnce) {
		return nil, fmt.Errorf("dlock: trylock %q: %w", key, ErrLockLost)
	}
	return l, err
}

func (c *Client) lockedError(ctx context.Context, key string) error {
	e := &LockedError{Key: key}
	if entry, err := c.ops.Get(ctx, key); err == nil {
		e.Holder, _ = holderOf(entry, c.ttl, time.Now())
	}
	if mine := c.heldLock(key, e.Holder.Owner); mine != nil {
		e.ByThisClient = true
		if e.Holder.Owner == "" { // the read failed: say what we know
			e.Holder = HolderInfo{Owner: mine.owner, Hostname: c.hostname, PID: c.pid, Token: mine.token}
		}
	}
	return e
}

// heldLock returns a live Lock of this client on key: the one with the
// given owner, or when owner is empty any one.
func (c *Client) heldLock(key, owner string) *Lock {
	c.mu.Lock()
	defer c.mu.Unlock()
	for l := range c.locks {
		if l.key == key && (owner == "" || l.owner == owner) {
			return l
		}
	}
	return nil
}

// leaseSlot is a lease of one key and the owner it writes for now. A
// Client keeps the lease of a key it unlocked cleanly for its next Lock
// of that key, with a new owner: the lease knows the purge marker its
// release left, so the next acquisition is one write instead of a read
// and a write.
type leaseSlot struct {
	lease *natskvlease.Lease
	owner atomic.Pointer[string]
}

// maxIdleLeases bounds the leases a Client keeps between holdings.
const maxIdleLeases = 1024

// leaseFor returns the lease for a new holding of key by owner: the key's
// idle lease, if the Client kept one, or a new one.
func (c *Client) leaseFor(key, owner string) *leaseSlot {
	value := record{Owner: owner, Hostname: c.hostname, PID: c.pid, TTL: c.ttl}.encode()
	if s := c.takeIdle(key); s != nil {
		s.owner.Store(&owner)
		s.lease.UpdateValue(value)
		return s
	}
	s := &leaseSlot{}
	s.owner.Store(&owner)
	s.lease = natskvlease.NewLease(c.kv, natskvlease.LeaseConfig{
		Key:   key,
		TTL:   c.ttl,
		Value: value,
		// A stored value is this holding's when its owner nonce is the
		// slot's current one: an earlier holding's value is not.
		IsOwner: func(v []byte) bool { return ownedBy(*s.owner.Load())(v) },
		Logger:  c.logger,
		Metrics: c.metrics,
	})
	return s
}

func (c *Client) takeIdle(key string) *leaseSlot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.idle[key]
	delete(c.idle, key)
	return s
}

// keepIdle keeps the lease of key, which no Lock holds, for the next one.
func (c *Client) keepIdle(key string, s *leaseSlot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.idle) >= maxIdleLeases && c.idle[key] == nil {
		return
	}
	if c.idle == nil {
		c.idle = make(map[string]*leaseSlot)
	}
	c.idle[key] = s
}

// hold turns a freshly acquired lease into a registered Lock, renewed
// by the lease's own loop.
func (c *Client) hold(slot *leaseSlot, key, owner string) (*Lock, error) {
	lease := slot.lease
	leaseCtx := lease.Context() // before Token: a token read after it is of this holding
	token := lease.Token()
	if token == 0 {
		return nil, errLostAtOnce
	}
	// Renewals also record the token and the acquisition time, for Holder.
	lease.UpdateValue(record{Owner: owner, Hostname: c.hostname, PID: c.pid, AcquiredAt: time.Now(), Token: token, TTL: c.ttl}.encode())
	l := &Lock{
		client: c,
		lease:  lease,
		slot:   slot,
		key:    key,
		owner:  owner,
		token:  token,
		logger: c.logger.With("key", key, "token", token),
		lost:   make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	if err := c.register(l); err != nil { // Close began meanwhile
		l.cancel(err)
		c.releaseQuietly(lease)
		return nil, fmt.Errorf("dlock: %q: %w", key, err)
	}
	// The lease ends the holding at its safety deadline at the latest,
	// even while a renewal hangs; this callback costs nothing until then.
	l.unhookLoss = context.AfterFunc(leaseCtx, l.markLost)
	if err := lease.KeepAlive(context.Background()); err != nil {
		l.markLost() // lost between acquiring and now
	}
	l.logger.Debug("dlock: locked")
	return l, nil
}

func (c *Client) releaseQuietly(lease *natskvlease.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), c.ttl)
	defer cancel()
	if err := lease.Release(ctx); err != nil {
		c.logger.Warn("dlock: release", "error", err)
	}
}

// Key returns the locked key.
func (l *Lock) Key() string { return l.key }

// Owner returns the nonce identifying this holding (HolderInfo.Owner).
func (l *Lock) Owner() string { return l.owner }

// Token returns the fencing token: the key's revision when the lock was
// acquired, fixed for the life of the lock. Tokens of successive holdings
// of a key strictly increase. Pass it to the resource the lock protects
// and have the resource refuse a token smaller than one it has seen: a
// holder paused past its TTL cannot then do harm.
func (l *Lock) Token() uint64 { return l.token }

// Context returns a context cancelled the moment the holding ends: when
// the lock is lost (its cause then wraps ErrLockLost) or when Unlock
// begins. A lost lock's context is cancelled before the key can expire on
// the server, hence before anyone else can take it, as long as the
// clocks of client and server run at nearly the same rate.
func (l *Lock) Context() context.Context { return l.ctx }

// Lost returns a channel closed when the lock is lost: a renewal failed
// or could not be made before the safety deadline. It is not closed by
// Unlock.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Unlock releases the lock with one revision-checked purge, so that it
// can never remove a later holder's key, and waiters take it at once.
// Context is cancelled before the purge is sent. If the lock had been
// lost, Unlock returns an error wrapping ErrLockLost; if the purge could
// not be confirmed, an error saying so (the key then expires after its
// TTL). A second call (or a call after Client.Close released the lock)
// returns an error wrapping natskvlease.ErrLeaseNotHeld and does nothing,
// as a second natskvlease.Lease.Release does.
func (l *Lock) Unlock(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unlocked {
		return fmt.Errorf("dlock: unlock %q: already unlocked: %w", l.key, natskvlease.ErrLeaseNotHeld)
	}
	l.unlocked = true
	defer l.client.forget(l)
	if !l.lease.IsHeld() {
		l.markLost()
	}
	l.unhookLoss() // a release is not a loss
	l.cancel(nil)
	err := l.lease.Release(ctx) // stops the renewals first
	switch {
	case errors.Is(err, natskvlease.ErrLeaseNotHeld):
		l.markLost()
		return fmt.Errorf("dlock: unlock %q: %w before Unlock", l.key, ErrLockLost)
	case err != nil:
		return fmt.Errorf("dlock: unlock %q: %w", l.key, err)
	}
	l.client.keepIdle(l.key, l.slot) // released cleanly: its next Lock writes at once
	l.logger.Debug("dlock: unlocked")
	return nil
}

// markLost marks the lock lost: called when the lease's holding ends
// other than by Unlock.
func (l *Lock) markLost() {
	l.lostOnce.Do(func() {
		l.cancel(fmt.Errorf("dlock: %q: %w", l.key, ErrLockLost))
		close(l.lost)
		l.client.forget(l) // nothing left for Close to release
		l.logger.Warn("dlock: lock lost")
	})
}
