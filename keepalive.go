package natskvlease

import (
	"context"
	"errors"
	"sync"
	"time"
)

// KeepAlive renews the current holding in the background until it ends:
// by Release or StopCamping, by a loss (Done closes, OnLost is called),
// or when ctx ends, which releases it. It returns ErrLeaseNotHeld if the
// lease is not held. A later holding is not renewed by this loop: call
// KeepAlive again after the next Acquire. A KeepAlive (or RunCamping)
// while an earlier loop runs stops that loop, without releasing, and
// renews under the new ctx instead.
//
// Renewals are due TTL*RenewRatio after the last successful write was
// sent, never later than leaves room for two attempts before the safety
// deadline (see LeaseConfig.RenewRatio). The loop holds no goroutine
// while it waits: each renewal runs on a timer's goroutine, so a process
// can keep thousands of leases for a timer each.
//
// This loop is the only one that renews a lease in this module: dlock,
// leadelect and LeaseManager all hold their leases with it.
func (l *Lease) KeepAlive(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	l.stopLoop()
	return l.keepAlive(ctx)
}

func (l *Lease) keepAlive(ctx context.Context) error {
	h, held := l.current()
	if !held {
		return ErrLeaseNotHeld
	}
	loopCtx, cancel := context.WithCancel(ctx)
	c := &campaign{lease: l, parent: ctx, ctx: loopCtx, cancel: cancel, gen: h.gen, done: make(chan struct{})}
	l.mu.Lock()
	old := l.camp
	l.camp = c
	l.mu.Unlock()
	if old != nil { // a concurrent KeepAlive started one meanwhile
		old.stop()
	}
	c.start(l.nextRenewal(h.gen))
	return nil
}

// RunCamping acquires the lease once and, if that succeeds, keeps it
// with KeepAlive(ctx): renewed in the background until ctx ends,
// StopCamping or Release is called (each of which releases it), or it
// is lost (OnLost). It reports whether the lease was acquired.
func (l *Lease) RunCamping(ctx context.Context) (bool, error) {
	if l.cfgErr != nil {
		return false, l.cfgErr
	}
	l.stopLoop()
	ok, err := l.Acquire(ctx)
	if !ok {
		return false, err
	}
	if err := l.keepAlive(ctx); err != nil {
		return false, nil // lost at once: the deadline passed meanwhile
	}
	return true, nil
}

// nextRenewal is how long until holding gen is due for renewal (see
// renewAfter); 0 if it is due now or has ended.
func (l *Lease) nextRenewal(gen uint64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.h.held || l.h.gen != gen {
		return 0
	}
	return max(time.Until(l.h.sentAt.Add(renewAfter(l.ttl, l.cfg.RenewRatio))), 0)
}

// campaign is the renewal loop: a timer that renews one holding, and a
// callback on the end of its context.
type campaign struct {
	lease  *Lease
	parent context.Context // the caller's: its end releases the lease
	ctx    context.Context // parent, or ended by stop
	cancel context.CancelFunc
	gen    uint64 // the holding renewed; a later one is not this loop's

	mu     sync.Mutex
	timer  *time.Timer
	unhook func() bool // removes the callback on the context
	ended  bool
	done   chan struct{} // closed once ended (and released, if due)
}

func (c *campaign) start(first time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timer = time.AfterFunc(first, c.renew)
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
		if !errors.Is(err, ErrLeaseNotHeld) {
			c.lease.logger.Debug("natskvlease: renewal loop ends", "error", err)
		}
		c.ended = true
		c.unhook()
		c.cancel()
		close(c.done)
	default:
		c.timer.Reset(c.lease.nextRenewal(c.gen))
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

// StopCamping stops the renewal loop started by RunCamping or KeepAlive
// and releases the lease, waiting at most one TTL for the server's
// answer.
func (l *Lease) StopCamping() {
	if l.cfgErr != nil {
		return
	}
	l.stopLoop()
	l.releaseAfterCancel()
}

// StopKeepAlive stops the renewal loop started by KeepAlive or
// RunCamping without releasing: the holding lasts until its safety
// deadline, and the key until its TTL, unless renewed or released by
// hand. A renewal in flight is cut short.
func (l *Lease) StopKeepAlive() {
	if l.cfgErr != nil {
		return
	}
	l.stopLoop()
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
