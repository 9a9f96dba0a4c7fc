package dlock_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestHolder(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	if _, err := c.Holder(natstest.Context(t), "h"); !errors.Is(err, dlock.ErrNotLocked) {
		t.Fatalf("Holder of a free key: %v, want ErrNotLocked", err)
	}
	before := time.Now()
	l := mustLock(t, c, "h")
	h, err := c.Holder(natstest.Context(t), "h")
	if err != nil {
		t.Fatalf("Holder: %v", err)
	}
	host, _ := os.Hostname()
	if h.Owner != l.Owner() || h.Hostname != host || h.PID != os.Getpid() || h.Token != l.Token() || h.Revision < l.Token() {
		t.Fatalf("Holder %+v; lock owner %s token %d", h, l.Owner(), l.Token())
	}
	if h.TimeLeft <= 0 || h.TimeLeft > e.ttl {
		t.Fatalf("TimeLeft %v, want in (0, %v]", h.TimeLeft, e.ttl)
	}
	if d := h.AcquiredAt.Sub(before); d < -time.Second || d > 5*time.Second {
		t.Fatalf("AcquiredAt %v, lock taken at about %v", h.AcquiredAt, before)
	}
	// After a renewal the token and acquisition time are still reported.
	natstest.Eventually(t, 10*time.Second, "a renewal", func() bool {
		h, err = c.Holder(natstest.Context(t), "h")
		return err == nil && h.Revision > l.Token()
	})
	if h.Owner != l.Owner() || h.Token != l.Token() || h.TimeLeft <= 0 || h.TimeLeft > e.ttl {
		t.Fatalf("Holder after renewal %+v; lock owner %s token %d", h, l.Owner(), l.Token())
	}
	if d := h.AcquiredAt.Sub(before); d < -time.Second || d > 5*time.Second {
		t.Fatalf("AcquiredAt after renewal %v, lock taken at about %v", h.AcquiredAt, before)
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if _, err := c.Holder(natstest.Context(t), "h"); !errors.Is(err, dlock.ErrNotLocked) {
		t.Fatalf("Holder after Unlock: %v, want ErrNotLocked", err)
	}
}

// A key whose holder died is reported free once the server expires it.
func TestHolderAfterExpiry(t *testing.T) {
	e := newEnv(t, time.Second)
	c, nc := e.client()
	observer, _ := e.client()
	l := mustLock(t, c, "x")
	nc.Close()
	waitClosed(t, l.Lost(), e.ttl+time.Second, "Lost")
	natstest.Eventually(t, e.ttl+2*time.Second, "expiry", func() bool {
		_, err := observer.Holder(natstest.Context(t), "x")
		return errors.Is(err, dlock.ErrNotLocked)
	})
}
