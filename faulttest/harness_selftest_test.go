package faulttest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/checker"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// TestHarnessCatchesIgnoredLoss shows that the recording used by the
// scenarios can fail: a holder that ignores its lost lease (its interval
// never ends when IsHeld turns false) overlaps the next real holder, and
// reusing its old token afterwards is a regression.
func TestHarnessCatchesIgnoredLoss(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bucket := newBucketName("selftest")
	_, js := srv.JetStream()
	createBucket(t, ctx, js, bucket, 1, false)
	lease := func(value string) *natskvlease.Lease {
		_, js := srv.JetStream()
		return natskvlease.NewLease(openKV(t, ctx, js, bucket), natskvlease.LeaseConfig{Key: leaseKey, TTL: leaseTTL, Value: []byte(value)})
	}
	a, b := lease("a"), lease("b")
	chk := checker.New()

	if ok, err := a.Acquire(ctx); !ok || err != nil {
		t.Fatalf("a.Acquire = %v, %v", ok, err)
	}
	tokA := a.Token()
	ignorant := chk.Begin("a", tokA) // a will not notice its loss
	if err := b.AcquireWait(ctx); err != nil {
		t.Fatalf("b.AcquireWait: %v", err)
	}
	if a.IsHeld() {
		t.Fatalf("a still IsHeld after b acquired")
	}
	ivb := chk.Begin("b", b.Token())
	ivb.End()
	if err := b.Release(ctx); err != nil {
		t.Fatalf("b.Release: %v", err)
	}
	ignorant.End()
	chk.Begin("a", tokA).End() // a comes back with its stale token

	r := chk.Check()
	if len(r.Overlaps) != 1 || len(r.Regressions) != 1 {
		t.Fatalf("want one overlap and one regression, got %v", r)
	}
	t.Logf("caught as expected: %v", r)
}

// TestHarnessFailsWithoutFaults: a scenario whose contenders ran with no
// fault injected is failed by its verdict, however clean its history.
func TestHarnessFailsWithoutFaults(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := newScenario(t, "nofault", newBucketName("nofault"), nil)
	_, js := srv.JetStream()
	createBucket(t, ctx, js, s.bucket, 1, false)
	for range 2 {
		_, js := srv.JetStream()
		s.addContender(openKV(t, ctx, js, s.bucket), nil)
	}
	s.start()
	s.waitHandoffs(t, 3, "without faults")
	s.stop()
	s.wg.Wait()
	r := s.chk.Check()
	problems := verdict(r, s.st.faults.Load())
	if len(problems) != 1 || !strings.Contains(problems[0], "no fault took effect") {
		t.Fatalf("verdict of a run without faults = %q; want only 'no fault took effect'", problems)
	}
	// And the verdict's other checks fire on planted violations.
	bad := checker.New()
	bad.Add("a", 2, 0, 10)
	bad.Add("b", 1, 5, 20)
	if got := verdict(bad.Check(), 1); len(got) != 1 || !strings.Contains(got[0], "safety violated") {
		t.Fatalf("verdict of a planted overlap = %q", got)
	}
}
