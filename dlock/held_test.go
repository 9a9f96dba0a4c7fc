package dlock_test

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// heldLocks takes n locks on distinct keys through c, with a few
// workers, and returns them.
func heldLocks(t testing.TB, c *dlock.Client, n int) []*dlock.Lock {
	t.Helper()
	ctx := natstest.Context(t)
	locks := make([]*dlock.Lock, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	const workers = 16
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				l, err := c.TryLock(ctx, fmt.Sprintf("held.%d", i))
				if err != nil {
					errs <- err
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("TryLock: %v", err)
	}
	return locks
}

// stableGoroutines is the goroutine count once it has settled (short-lived
// goroutines such as callbacks and watch clean-ups have ended).
func stableGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond) // a settling window for the count, not a synchronization
		m := runtime.NumGoroutine()
		if m == n {
			return m
		}
		n = m
	}
	return n
}

// TestHeldLockCostsNoGoroutine: a thousand held locks on one Client,
// renewed by their leases, add no goroutine: each is a timer and a
// callback registered on a context.
func TestHeldLockCostsNoGoroutine(t *testing.T) {
	e := newEnv(t, 3*time.Second)
	c, _ := e.client()
	before := stableGoroutines()
	const n = 1000
	locks := heldLocks(t, c, n)
	time.Sleep(2 * time.Second) // let every lock renew at least once: the loops are running
	after := stableGoroutines()
	for _, l := range locks {
		if l.Context().Err() != nil {
			t.Fatalf("%s lost while held", l.Key())
		}
	}
	t.Logf("%d held locks: goroutines %d before, %d after (%.3f per lock)", n, before, after, float64(after-before)/n)
	if after-before > 10 {
		t.Fatalf("%d held locks added %d goroutines; want none per lock", n, after-before)
	}
	ctx := natstest.Context(t)
	for _, l := range locks {
		if err := l.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
