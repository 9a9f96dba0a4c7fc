package faulttest

import (
	"context"
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
