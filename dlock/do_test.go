package dlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestDo(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	other, _ := e.client()
	boom := errors.New("boom")
	var got uint64
	err := c.Do(natstest.Context(t), "do", func(ctx context.Context, token uint64) error {
		got = token
		h, err := other.Holder(ctx, "do")
		if err != nil || h.Token != token {
			t.Errorf("inside Do: Holder %+v, %v; token %d", h, err, token)
		}
		if _, err := other.TryLock(ctx, "do"); !errors.Is(err, dlock.ErrLocked) {
			t.Errorf("TryLock inside Do: %v, want ErrLocked", err)
		}
		return boom
	})
	if !errors.Is(err, boom) || errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Do: %v, want fn's error", err)
	}
	if got == 0 {
		t.Fatal("fn got no token")
	}
	// Unlocked on return: another client takes it at once.
	l, err := other.TryLock(natstest.Context(t), "do")
	if err != nil {
		t.Fatalf("TryLock after Do: %v", err)
	}
	if l.Token() <= got {
		t.Fatalf("token %d after Do's %d", l.Token(), got)
	}
	_ = l.Unlock(natstest.Context(t))
}

func TestDoUnlocksOnPanic(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	other, _ := e.client()
	func() {
		defer func() {
			if r := recover(); r != "oops" {
				t.Fatalf("recovered %v, want the fn's panic", r)
			}
		}()
		_ = c.Do(natstest.Context(t), "p", func(context.Context, uint64) error { panic("oops") })
	}()
	l, err := other.TryLock(natstest.Context(t), "p")
	if err != nil {
		t.Fatalf("TryLock after a panicking Do: %v", err)
	}
	_ = l.Unlock(natstest.Context(t))
}

// Do cancels fn's context when the lock is lost, and reports the loss
// even though fn returned only what its context told it.
func TestDoCancelsOnLoss(t *testing.T) {
	e := newEnv(t, time.Second)
	c, nc := e.client()
	started := make(chan struct{})
	var cause error
	done := make(chan error, 1)
	go func() {
		done <- c.Do(natstest.Context(t), "work", func(ctx context.Context, _ uint64) error {
			close(started)
			<-ctx.Done()
			cause = context.Cause(ctx)
			return ctx.Err()
		})
	}()
	<-started
	killed := time.Now()
	nc.Close()
	var err error
	select {
	case err = <-done:
	case <-time.After(e.ttl + 5*time.Second):
		t.Fatal("Do did not return after its connection died")
	}
	t.Logf("Do returned %v after the kill: %v", time.Since(killed), err)
	if !errors.Is(err, dlock.ErrLockLost) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Do: %v, want ErrLockLost and fn's context.Canceled", err)
	}
	if !errors.Is(cause, dlock.ErrLockLost) {
		t.Fatalf("fn's context cause %v, want ErrLockLost", cause)
	}
}

// Do returns when the caller's context ends, with fn's error.
func TestDoCallerContext(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	ctx, cancel := context.WithCancel(natstest.Context(t))
	err := c.Do(ctx, "caller", func(ctx context.Context, _ uint64) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Do: %v, want context.Canceled only", err)
	}
	l, err := c.TryLock(natstest.Context(t), "caller")
	if err != nil {
		t.Fatalf("TryLock after Do: %v", err)
	}
	_ = l.Unlock(natstest.Context(t))
}
