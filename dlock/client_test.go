package dlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestCloseReleasesLocks(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	a, _ := e.client()
	b, _ := e.client()
	l1 := mustLock(t, a, "k1")
	l2 := mustLock(t, a, "k2")
	if _, err := b.TryLock(natstest.Context(t), "k1"); !errors.Is(err, dlock.ErrLocked) || !errors.Is(err, natskvlease.ErrLeaseExists) {
		t.Fatalf("TryLock on a held key: %v; want it to wrap ErrLocked and natskvlease.ErrLeaseExists", err)
	}
	if err := a.Close(natstest.Context(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, l := range []*dlock.Lock{l1, l2} {
		if l.Context().Err() == nil || isClosed(l.Lost()) {
			t.Fatalf("after Close: Context err %v, Lost closed %v", l.Context().Err(), isClosed(l.Lost()))
		}
		bl, err := b.TryLock(natstest.Context(t), l.Key())
		if err != nil {
			t.Fatalf("TryLock %s after Close: %v", l.Key(), err)
		}
		_ = bl.Unlock(natstest.Context(t))
		// Close released it: Unlock finds nothing to release.
		if err := l.Unlock(natstest.Context(t)); !errors.Is(err, natskvlease.ErrLeaseNotHeld) {
			t.Fatalf("Unlock after Close: %v, want ErrLeaseNotHeld", err)
		}
	}
	ctx := natstest.Context(t)
	calls := map[string]error{}
	_, calls["Lock"] = a.Lock(ctx, "k3")
	_, calls["TryLock"] = a.TryLock(ctx, "k3")
	_, calls["Holder"] = a.Holder(ctx, "k3")
	calls["Do"] = a.Do(ctx, "k3", func(context.Context, uint64) error { return nil })
	for name, err := range calls {
		if !errors.Is(err, natskvlease.ErrProviderClosed) {
			t.Errorf("%s after Close: %v, want ErrProviderClosed", name, err)
		}
	}
	if err := a.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCloseAbortsWaiters(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	a, _ := e.client()
	b, _ := e.client()
	l := mustLock(t, b, "w")
	errc := make(chan error, 1)
	go func() {
		_, err := a.Lock(natstest.Context(t), "w")
		errc <- err
	}()
	natstest.Eventually(t, 10*time.Second, "the waiter's watch", func() bool { return e.consumers() == waitingWatches })
	if err := a.Close(natstest.Context(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, natskvlease.ErrProviderClosed) {
			t.Fatalf("waiting Lock after Close: %v, want ErrProviderClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting Lock not aborted by Close")
	}
	if err := l.Unlock(natstest.Context(t)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

func TestBadInputs(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	c, _ := e.client()
	_, js := e.srv.JetStream()
	ctx := natstest.Context(t)
	newWith := func(js jetstream.JetStream, opts ...dlock.Option) error {
		c, err := dlock.New(ctx, js, opts...)
		if err == nil {
			_ = c.Close(ctx)
		}
		return err
	}
	cases := map[string]error{
		"New nil js":        newWith(nil),
		"New TTL 500ms":     newWith(js, dlock.WithTTL(500*time.Millisecond)),
		"New TTL 0":         newWith(js, dlock.WithTTL(0)),
		"New bad bucket":    newWith(js, dlock.WithBucket("no spaces")),
		"New empty bucket":  newWith(js, dlock.WithBucket("")),
		"New 7 replicas":    newWith(js, dlock.WithReplicas(7)),
		"New bad storage":   newWith(js, dlock.WithStorage(jetstream.StorageType(9))),
		"Do nil fn":         c.Do(ctx, "k", nil),
		"Lock empty key":    second(c.Lock(ctx, "")),
		"Lock key a..b":     second(c.Lock(ctx, "a..b")),
		"Lock key with *":   second(c.Lock(ctx, "a.*")),
		"TryLock empty key": second(c.TryLock(ctx, "")),
		"TryLock key .a":    second(c.TryLock(ctx, ".a")),
		"Holder empty key":  second(c.Holder(ctx, "")),
		"Holder key a b":    second(c.Holder(ctx, "a b")),
		"Do empty key":      c.Do(ctx, "", func(context.Context, uint64) error { return nil }),
	}
	for name, err := range cases {
		if !errors.Is(err, natskvlease.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		} else if msg := err.Error(); !strings.HasPrefix(msg, "dlock: ") || strings.Count(msg, "dlock:") != 1 || strings.Contains(msg, "natskvlease:") {
			t.Errorf("%s: %q: want the dlock: prefix once, and no other", name, msg)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestNewChecksServer(t *testing.T) {
	srv := natstest.Start(t, natstest.WithoutJetStream())
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(natstest.Context(t), 10*time.Second)
	defer cancel()
	_, err := dlock.New(ctx, js)
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		t.Fatalf("New against a server without JetStream: %v, want ErrJetStreamNotEnabled", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "dlock: JetStream not available") || strings.Contains(msg, "natskvlease:") {
		t.Errorf("error %q: want the dlock: prefix once, and no other", msg)
	}
}

func TestNewBucketMismatch(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	e.client() // creates the bucket, without MaxAge
	_, js := e.srv.JetStream()
	ctx := natstest.Context(t)
	// A bucket dlock created takes any TTL.
	c, err := dlock.New(ctx, js, dlock.WithBucket(e.bucket), dlock.WithTTL(30*time.Second))
	if err != nil {
		t.Fatalf("New with another TTL on a bucket dlock created: %v", err)
	}
	_ = c.Close(ctx)
	// One with a MaxAge takes TTLs up to it, and names the fix above it.
	if _, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "aged", TTL: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	c, err = dlock.New(ctx, js, dlock.WithBucket("aged"), dlock.WithTTL(time.Second))
	if err != nil {
		t.Fatalf("New with a TTL below MaxAge: %v", err)
	}
	_ = c.Close(ctx)
	_, err = dlock.New(ctx, js, dlock.WithBucket("aged"), dlock.WithTTL(3*time.Second))
	if !errors.Is(err, natskvlease.ErrBucketMismatch) || !strings.Contains(err.Error(), "at most 2s") {
		t.Fatalf("New with a TTL above MaxAge: %v, want ErrBucketMismatch naming the fix", err)
	}
}

func TestDefaults(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx := natstest.Context(t)
	c, err := dlock.New(ctx, js)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close(ctx)
	if c.TTL() != dlock.DefaultTTL {
		t.Fatalf("TTL %v", c.TTL())
	}
	kv, err := js.KeyValue(ctx, dlock.DefaultBucket)
	if err != nil {
		t.Fatalf("default bucket: %v", err)
	}
	// No MaxAge (any TTL), expiry markers on.
	st, err := kv.Status(ctx)
	if err != nil || st.TTL() != 0 || st.LimitMarkerTTL() != dlock.DefaultTTL {
		t.Fatalf("bucket status %v, %v", st, err)
	}
}
