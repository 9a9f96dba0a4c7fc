package natskvlease

import (
	"context"
	"sync"
	"time"
)

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
