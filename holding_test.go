package natskvlease

import (
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// The deadline arithmetic and the renewal schedule are functions of
// explicit times and inputs: tested here with no server and no sleeps.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestHoldingLiveAt(t *testing.T) {
	h := holding{held: true, deadline: t0.Add(time.Second)}
	cases := []struct {
		name string
		h    holding
		now  time.Time
		want bool
	}{
		{"before the deadline", h, t0, true},
		{"a nanosecond before", h, t0.Add(time.Second - 1), true},
		{"at the deadline", h, t0.Add(time.Second), false},
		{"after it", h, t0.Add(2 * time.Second), false},
		{"ended", holding{deadline: t0.Add(time.Second)}, t0, false},
		{"never held", holding{}, t0, false},
	}
	for _, tc := range cases {
		if got := tc.h.liveAt(tc.now); got != tc.want {
			t.Errorf("%s: liveAt = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSafetyDeadline(t *testing.T) {
	cases := []struct {
		ttl, want time.Duration
	}{
		{time.Second, 900 * time.Millisecond},
		{2 * time.Second, 1800 * time.Millisecond},
		{10 * time.Second, 9 * time.Second},
		{time.Minute, 54 * time.Second},
	}
	for _, tc := range cases {
		if got := safetyDeadline(t0, tc.ttl).Sub(t0); got != tc.want {
			t.Errorf("safetyDeadline(TTL %v) = sent + %v, want + %v", tc.ttl, got, tc.want)
		}
	}
}

func TestAttemptTimeout(t *testing.T) {
	cases := []struct{ ttl, want time.Duration }{
		{time.Second, 250 * time.Millisecond}, // floor
		{2 * time.Second, 500 * time.Millisecond},
		{4 * time.Second, time.Second},
		{8 * time.Second, 2 * time.Second},
		{time.Minute, 2 * time.Second}, // cap
	}
	for _, tc := range cases {
		if got := attemptTimeout(tc.ttl); got != tc.want {
			t.Errorf("attemptTimeout(%v) = %v, want %v", tc.ttl, got, tc.want)
		}
	}
}

// TestRenewAfterLeavesTwoAttempts: for every ratio the configuration
// accepts, (0, 1], the first renewal is due early enough that it and a
// second attempt, each given its full attempt timeout, end before the
// safety deadline; ratios that allow that are kept as they are.
func TestRenewAfterLeavesTwoAttempts(t *testing.T) {
	ttls := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 10 * time.Second, 30 * time.Second, time.Hour}
	ratios := []float64{0.01, 0.1, 1.0 / 3, 0.4, 0.5, 0.9, 0.95, 1}
	for _, ttl := range ttls {
		deadline := safetyDeadline(t0, ttl)
		for _, r := range ratios {
			d := renewAfter(ttl, r)
			if d <= 0 {
				t.Errorf("TTL %v ratio %v: renewal after %v", ttl, r, d)
			}
			if end := t0.Add(d + 2*attemptTimeout(ttl)); end.After(deadline) {
				t.Errorf("TTL %v ratio %v: renewal at %v leaves no room for two attempts before the deadline at %v", ttl, r, d, deadline.Sub(t0))
			}
			if asked := time.Duration(float64(ttl) * r); d != asked && d != ttl-ttl/10-2*attemptTimeout(ttl) {
				t.Errorf("TTL %v ratio %v: renewal at %v, neither the ratio's %v nor the cap", ttl, r, d, asked)
			}
		}
	}
	// The documented caps.
	for _, tc := range []struct {
		ttl  time.Duration
		want time.Duration
	}{
		{time.Second, 400 * time.Millisecond},
		{8 * time.Second, 3200 * time.Millisecond},
		{10 * time.Second, 5 * time.Second},
	} {
		if got := renewAfter(tc.ttl, 1); got != tc.want {
			t.Errorf("renewAfter(%v, 1) = %v, want the cap %v", tc.ttl, got, tc.want)
		}
	}
}

// TestLeaseLargeRenewRatioStaysHeld: a lease renewed by its own loop with
// RenewRatio 0.95 or 1 stays held for ten TTLs against a real server,
// with no OnLost: the schedule caps the ratio.
func TestLeaseLargeRenewRatioStaysHeld(t *testing.T) {
	for _, ratio := range []float64{0.95, 1} {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			srv := natstest.Start(t)
			_, kv := testBucket(t, srv, time.Second)
			lost := make(chan struct{}, 1)
			cfg := LeaseConfig{Key: "job", Value: []byte("a"), TTL: time.Second, RenewRatio: ratio}
			cfg.Callbacks.OnLost = func() { lost <- struct{}{} }
			l := NewLease(kv, cfg)
			ctx := natstest.Context(t)
			if ok, err := l.RunCamping(ctx); !ok || err != nil {
				t.Fatalf("RunCamping = %v, %v", ok, err)
			}
			defer l.StopCamping()
			tok := l.Token()
			select {
			case <-lost:
				t.Fatalf("ratio %v: OnLost within ten TTLs", ratio)
			case <-l.Done():
				t.Fatalf("ratio %v: the holding ended within ten TTLs", ratio)
			case <-time.After(10 * time.Second):
			}
			if !l.IsHeld() || l.Token() != tok {
				t.Fatalf("ratio %v: held %v token %d after ten TTLs; want the same holding", ratio, l.IsHeld(), l.Token())
			}
		})
	}
}

func TestContentionRecheck(t *testing.T) {
	cases := []struct{ took, attempt, want time.Duration }{
		{0, time.Second, 5 * time.Millisecond},
		{100 * time.Microsecond, time.Second, 5200 * time.Microsecond},
		{2 * time.Millisecond, time.Second, 9 * time.Millisecond},
		{400 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond}, // capped
	}
	for _, tc := range cases {
		if got := contentionRecheck(tc.took, tc.attempt); got != tc.want {
			t.Errorf("contentionRecheck(%v, %v) = %v, want %v", tc.took, tc.attempt, got, tc.want)
		}
	}
}

func TestPollIntervalJitter(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Second, 10 * time.Second} {
		base := ttl
		if base == 0 {
			base = DefaultBucketTTL
		}
		lo, hi := base*4/10, base*6/10
		for range 1000 {
			if d := pollInterval(ttl); d < lo || d > hi {
				t.Fatalf("pollInterval(%v) = %v, want within [%v, %v]", ttl, d, lo, hi)
			}
		}
	}
}
