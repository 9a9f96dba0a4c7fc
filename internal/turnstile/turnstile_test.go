package turnstile

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// One caller per key at a time; every caller gets its turn; keys are
// independent; the set forgets a key nobody waits for.
func TestOneAtATimePerKey(t *testing.T) {
	var s Set
	const callers = 50
	var inside [2]atomic.Int32
	var wg sync.WaitGroup
	for i := range callers {
		key := []string{"a", "b"}[i%2]
		wg.Go(func() {
			pass, err := s.Wait(context.Background(), key)
			if err != nil {
				t.Error(err)
				return
			}
			if n := inside[i%2].Add(1); n != 1 {
				t.Errorf("key %s: %d callers hold the turn", key, n)
			}
			inside[i%2].Add(-1)
			pass()
			pass() // a second call is harmless
		})
	}
	wg.Wait()
	if n := s.Len(); n != 0 {
		t.Fatalf("%d keys remembered after everyone left", n)
	}
}

// A waiter whose context ends leaves the queue without the turn.
func TestWaitHonoursContext(t *testing.T) {
	var s Set
	pass, err := s.Wait(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Wait(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait behind a holder = %v, want the context's error", err)
	}
	pass()
	if n := s.Len(); n != 0 {
		t.Fatalf("%d keys remembered after everyone left", n)
	}
	// The turn is free again.
	pass, err = s.Wait(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	pass()
}
