package leadelect_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

func TestNewRefusesBadConfig(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	good := leadelect.Config{Key: "k", ID: "me"}
	with := func(f func(*leadelect.Config)) leadelect.Config { c := good; f(&c); return c }
	tests := []struct {
		name  string
		js    jetstream.JetStream
		cfg   leadelect.Config
		field string
	}{
		{"nil JetStream", nil, good, "jetstream.JetStream"},
		{"empty key", js, with(func(c *leadelect.Config) { c.Key = "" }), "Config.Key"},
		{"wildcard key", js, with(func(c *leadelect.Config) { c.Key = "a.*" }), "Config.Key"},
		{"empty token", js, with(func(c *leadelect.Config) { c.Key = "a..b" }), "Config.Key"},
		{"leading dot", js, with(func(c *leadelect.Config) { c.Key = ".a" }), "Config.Key"},
		{"space in key", js, with(func(c *leadelect.Config) { c.Key = "a b" }), "Config.Key"},
		{"bad bucket", js, with(func(c *leadelect.Config) { c.Bucket = "a.b" }), "Config.Bucket"},
		{"empty ID", js, with(func(c *leadelect.Config) { c.ID = "" }), "Config.ID"},
		{"ID not UTF-8", js, with(func(c *leadelect.Config) { c.ID = "\xff" }), "Config.ID"},
		{"TTL below 1s", js, with(func(c *leadelect.Config) { c.TTL = 999 * time.Millisecond }), "Config.TTL"},
		{"negative TTL", js, with(func(c *leadelect.Config) { c.TTL = -time.Second }), "Config.TTL"},
		{"negative RenewRatio", js, with(func(c *leadelect.Config) { c.RenewRatio = -0.1 }), "Config.RenewRatio"},
		{"RenewRatio too large", js, with(func(c *leadelect.Config) { c.RenewRatio = 1.5 }), "Config.RenewRatio"},
		{"RenewRatio NaN", js, with(func(c *leadelect.Config) { c.RenewRatio = math.NaN() }), "Config.RenewRatio"},
		{"too many replicas", js, with(func(c *leadelect.Config) { c.Replicas = 6 }), "Config.Replicas"},
		{"negative replicas", js, with(func(c *leadelect.Config) { c.Replicas = -1 }), "Config.Replicas"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := leadelect.New(tc.js, tc.cfg)
			if e != nil || !errors.Is(err, natskvlease.ErrInvalidConfig) {
				t.Fatalf("New = %v, %v; want an error wrapping ErrInvalidConfig", e, err)
			}
			var ce *natskvlease.ConfigError
			if !errors.As(err, &ce) || !strings.HasSuffix(ce.Field, tc.field) {
				t.Fatalf("error %v does not name %s", err, tc.field)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "leadelect: invalid ") || strings.Count(msg, "leadelect:") != 1 || strings.Contains(msg, "natskvlease:") {
				t.Errorf("error %q: want the leadelect: prefix once, and no other", msg)
			}
			t.Logf("%v", err)
		})
	}
}

func TestNewObserverRefusesBadConfig(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	for _, cfg := range []leadelect.ObserverConfig{{Key: ""}, {Key: "a>"}, {Key: "k", Bucket: "no/slash"}} {
		if _, err := leadelect.NewObserver(js, cfg); !errors.Is(err, natskvlease.ErrInvalidConfig) {
			t.Errorf("NewObserver(%+v): %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := leadelect.NewObserver(nil, leadelect.ObserverConfig{Key: "k"}); !errors.Is(err, natskvlease.ErrInvalidConfig) {
		t.Errorf("NewObserver(nil): %v", err)
	}
}

func TestNewAcceptsDefaults(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	for _, cfg := range []leadelect.Config{
		{Key: "k", ID: "me"},
		{Key: "a/b=c.d_e-f", ID: "me", TTL: time.Second, RenewRatio: leadelect.MaxRenewRatio, Replicas: 1},
	} {
		if _, err := leadelect.New(js, cfg); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
}

// runErr runs e until Run returns, which it must do promptly.
func runErr(t *testing.T, e *leadelect.Election) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err := e.Run(ctx, leadelect.Callbacks{OnStartedLeading: func(context.Context) { t.Error("led") }})
	if ctx.Err() != nil {
		t.Fatalf("Run did not return an error before %v: %v", waitTimeout, err)
	}
	return err
}

func TestRunRefusesUnusableBucket(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx := natstest.Context(t)
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "nomarkers", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "short", TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		bucket string
		ttl    time.Duration
		want   error
	}{
		{"nomarkers", time.Second, natskvlease.ErrBucketMismatch},
		{"short", 2 * time.Second, natskvlease.ErrTTLNotSupported},
	}
	for _, tc := range tests {
		e, err := leadelect.New(js, leadelect.Config{Bucket: tc.bucket, Key: "k", ID: "me", TTL: tc.ttl})
		if err != nil {
			t.Fatal(err)
		}
		err = runErr(t, e)
		if !errors.Is(err, tc.want) {
			t.Errorf("Run on bucket %s with TTL %v: %v, want %v", tc.bucket, tc.ttl, err, tc.want)
		}
		t.Logf("%v", err)
	}
	// A bucket with a longer MaxAge serves a shorter TTL.
	e, err := leadelect.New(js, leadelect.Config{Bucket: "short", Key: "k", ID: "me", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Leader(ctx); !errors.Is(err, leadelect.ErrNoLeader) {
		t.Fatalf("Leader on a usable bucket: %v", err)
	}
}

func TestRunWithoutJetStream(t *testing.T) {
	srv := natstest.Start(t, natstest.WithoutJetStream())
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e, err := leadelect.New(js, leadelect.Config{Key: "k", ID: "me"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = runErr(t, e)
	t.Logf("after %v: %v", time.Since(start), err)
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run without JetStream: %v, want ErrJetStreamNotEnabled", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "leadelect: JetStream not available") || strings.Count(msg, "leadelect:") != 1 || strings.Contains(msg, "natskvlease:") {
		t.Errorf("error %q: want the leadelect: prefix once, and no other", msg)
	}
}
