package natskvlease_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// warnings counts Warn records.
type warnings struct {
	mu  sync.Mutex
	msg []string
}

func (w *warnings) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.mu.Lock()
		w.msg = append(w.msg, r.Message)
		w.mu.Unlock()
	}
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }
func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msg...)
}

// A handle from js.KeyValue, not bound: the lease renews and believes
// by its own TTL, the bucket's MaxAge expires a dead holder.
func TestUnboundHandle(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx := natstest.Context(t)
	const maxAge, ttl = 3 * time.Second, time.Second
	if _, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "plain", TTL: maxAge}); err != nil {
		t.Fatal(err)
	}
	plain, err := js.KeyValue(ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	w := &warnings{}
	a := natskvlease.NewLease(plain, natskvlease.LeaseConfig{Key: "k", Value: []byte("a"), TTL: ttl, Logger: slog.New(w)})
	if ok, err := a.Acquire(ctx); !ok || err != nil {
		t.Fatalf("Acquire = %v, %v", ok, err)
	}
	if ok, err := a.Renew(ctx); !ok || err != nil {
		t.Fatalf("Renew = %v, %v", ok, err)
	}
	if a.TTL() != ttl || a.ServerExpiry() != maxAge {
		t.Fatalf("TTL %v, ServerExpiry %v; want %v, %v", a.TTL(), a.ServerExpiry(), ttl, maxAge)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if msgs := w.all(); len(msgs) != 1 || !strings.Contains(msgs[0], "BindJetStream") || !strings.Contains(msgs[0], "MaxAge") {
		t.Fatalf("warnings %q, want one naming MaxAge and BindJetStream", msgs)
	}

	// A dead holder is replaced after MaxAge, never before its own TTL.
	nc2, js2 := srv.JetStream()
	plain2, err := js2.KeyValue(ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	dead := natskvlease.NewLease(plain2, natskvlease.LeaseConfig{Key: "k", Value: []byte("dead"), TTL: ttl})
	if ok, err := dead.Acquire(ctx); !ok || err != nil {
		t.Fatalf("Acquire = %v, %v", ok, err)
	}
	acquired := time.Now()
	nc2.Close()
	if err := a.AcquireWait(ctx); err != nil {
		t.Fatalf("AcquireWait: %v", err)
	}
	took := time.Since(acquired)
	t.Logf("failover on an unbound handle: %v (TTL %v, MaxAge %v)", took.Round(time.Millisecond), ttl, maxAge)
	if took < maxAge-100*time.Millisecond || took > maxAge+3*time.Second {
		t.Fatalf("failover took %v, want about MaxAge %v", took, maxAge)
	}
	_ = a.Release(ctx)

	// Refusals name the fix that applies.
	if _, err := natskvlease.NewKVHelper(js, nil).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{Bucket: "anyttl", TTL: ttl}); err != nil {
		t.Fatal(err)
	}
	anyTTL, err := js.KeyValue(ctx, "anyttl")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, fix string
		l         *natskvlease.Lease
	}{
		{"no MaxAge, unbound", "BindJetStream", natskvlease.NewLease(anyTTL, natskvlease.LeaseConfig{Key: "k", Value: []byte("x"), TTL: ttl})},
		{"above MaxAge", "at most 3s", natskvlease.NewLease(plain, natskvlease.LeaseConfig{Key: "k", Value: []byte("x"), TTL: 2 * maxAge})},
	} {
		err := tc.l.Check(ctx)
		if !errors.Is(err, natskvlease.ErrTTLNotSupported) || !strings.Contains(err.Error(), tc.fix) {
			t.Errorf("%s: Check = %v, want ErrTTLNotSupported naming %q", tc.name, err, tc.fix)
		}
	}
}
