package natskvlease

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// bucketStatus returns the bucket's status with its stream info.
func bucketStatus(t *testing.T, kv jetstream.KeyValue) *jetstream.KeyValueBucketStatus {
	t.Helper()
	st, err := kv.Status(natstest.Context(t))
	if err != nil {
		t.Fatalf("Status(%s): %v", kv.Bucket(), err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		t.Fatalf("Status(%s) is %T, want *jetstream.KeyValueBucketStatus with stream info", kv.Bucket(), st)
	}
	return bs
}

func uniqueBucket(prefix string) string {
	return fmt.Sprintf("%s_%d", prefix, bucketSeq.Add(1))
}

func TestGetOrCreateBucketCreatesLeaseBucket(t *testing.T) {
	srv := natstest.Start(t)
	cases := []struct {
		name        string
		cfg         BucketConfig
		ttl         time.Duration
		storage     jetstream.StorageType
		compression bool
	}{
		{"defaults", BucketConfig{}, DefaultBucketTTL, jetstream.MemoryStorage, false},
		{"ttl 3s", BucketConfig{TTL: 3 * time.Second}, 3 * time.Second, jetstream.MemoryStorage, false},
		{"ttl 1s", BucketConfig{TTL: time.Second}, time.Second, jetstream.MemoryStorage, false},
		{"ttl 1500ms", BucketConfig{TTL: 1500 * time.Millisecond}, 1500 * time.Millisecond, jetstream.MemoryStorage, false},
		{"ttl 1h", BucketConfig{TTL: time.Hour}, time.Hour, jetstream.MemoryStorage, false},
		{"file storage", BucketConfig{FileStorage: true}, DefaultBucketTTL, jetstream.FileStorage, false},
		{"explicit memory storage", BucketConfig{Storage: jetstream.MemoryStorage}, DefaultBucketTTL, jetstream.MemoryStorage, false},
		{"Storage FileStorage alone is ignored", BucketConfig{Storage: jetstream.FileStorage}, DefaultBucketTTL, jetstream.MemoryStorage, false},
		{"Storage FileStorage with FileStorage", BucketConfig{Storage: jetstream.FileStorage, FileStorage: true}, DefaultBucketTTL, jetstream.FileStorage, false},
		{"compression", BucketConfig{Compression: true}, DefaultBucketTTL, jetstream.MemoryStorage, true},
		{"file storage compressed", BucketConfig{FileStorage: true, Compression: true, TTL: 2 * time.Second}, 2 * time.Second, jetstream.FileStorage, true},
		{"replicas 1", BucketConfig{Replicas: 1}, DefaultBucketTTL, jetstream.MemoryStorage, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, js := srv.JetStream()
			cfg := c.cfg
			cfg.Bucket = uniqueBucket("create")
			kv, err := NewKVHelper(js, nil).GetOrCreateBucket(natstest.Context(t), cfg)
			if err != nil {
				t.Fatalf("GetOrCreateBucket(%+v): %v", cfg, err)
			}
			if kv.Bucket() != cfg.Bucket {
				t.Fatalf("Bucket() = %q, want %q", kv.Bucket(), cfg.Bucket)
			}
			if got := jetStreamOf(kv); got != js {
				t.Fatalf("jetStreamOf(kv) = %v, want the helper's JetStream", got)
			}
			st := bucketStatus(t, kv)
			sc := st.StreamInfo().Config
			if sc.Name != "KV_"+cfg.Bucket {
				t.Errorf("stream name %q", sc.Name)
			}
			if st.TTL() != c.ttl || sc.MaxAge != c.ttl {
				t.Errorf("MaxAge = %v (status TTL %v), want %v", sc.MaxAge, st.TTL(), c.ttl)
			}
			if st.History() != 1 || sc.MaxMsgsPerSubject != 1 {
				t.Errorf("History = %d, want 1", st.History())
			}
			if sc.Storage != c.storage {
				t.Errorf("Storage = %v, want %v", sc.Storage, c.storage)
			}
			if sc.Replicas != 1 {
				t.Errorf("Replicas = %d, want 1", sc.Replicas)
			}
			if st.IsCompressed() != c.compression {
				t.Errorf("compressed = %v (%v), want %v", st.IsCompressed(), sc.Compression, c.compression)
			}
			if c.compression && sc.Compression != jetstream.S2Compression {
				t.Errorf("Compression = %v, want S2", sc.Compression)
			}
			if st.LimitMarkerTTL() != c.ttl || sc.SubjectDeleteMarkerTTL != c.ttl {
				t.Errorf("LimitMarkerTTL = %v, want %v", st.LimitMarkerTTL(), c.ttl)
			}
			if !sc.AllowMsgTTL {
				t.Errorf("AllowMsgTTL = false, want true")
			}
		})
	}
}

func TestGetOrCreateBucketOpensExisting(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)
	_, js1 := srv.JetStream()
	for _, c := range []struct {
		name        string
		first, then BucketConfig
	}{
		{"same TTL", BucketConfig{TTL: 3 * time.Second}, BucketConfig{TTL: 3 * time.Second}},
		{"default TTL both times", BucketConfig{}, BucketConfig{}},
		{"default then explicit 10s", BucketConfig{}, BucketConfig{TTL: DefaultBucketTTL}},
		{"explicit 10s then default", BucketConfig{TTL: DefaultBucketTTL}, BucketConfig{}},
		{"other settings differ", BucketConfig{TTL: 4 * time.Second}, BucketConfig{TTL: 4 * time.Second, Compression: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := uniqueBucket("existing")
			c.first.Bucket, c.then.Bucket = name, name
			if _, err := NewKVHelper(js1, nil).GetOrCreateBucket(ctx, c.first); err != nil {
				t.Fatalf("create: %v", err)
			}
			before := bucketStatus(t, BindJetStream(mustKV(t, js1, name), js1)).StreamInfo().Config

			// Another process, another connection.
			_, js2 := srv.JetStream()
			kv, err := NewKVHelper(js2, nil).GetOrCreateBucket(ctx, c.then)
			if err != nil {
				t.Fatalf("open existing: %v", err)
			}
			if kv.Bucket() != name {
				t.Fatalf("Bucket() = %q, want %q", kv.Bucket(), name)
			}
			if got := jetStreamOf(kv); got == nil || got != js2 {
				t.Fatalf("jetStreamOf(opened kv) = %v, want the opening helper's JetStream", got)
			}
			after := bucketStatus(t, kv).StreamInfo().Config
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("opening reconfigured the bucket:\nbefore %+v\nafter  %+v", before, after)
			}
			// The opened handle works.
			if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
				t.Fatalf("Put through the opened bucket: %v", err)
			}
		})
	}
}

func mustKV(t *testing.T, js jetstream.JetStream, bucket string) jetstream.KeyValue {
	t.Helper()
	kv, err := js.KeyValue(natstest.Context(t), bucket)
	if err != nil {
		t.Fatalf("KeyValue(%s): %v", bucket, err)
	}
	return kv
}

func TestGetOrCreateBucketMismatch(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)
	_, js := srv.JetStream()
	cases := []struct {
		name     string
		create   func(t *testing.T, bucket string)
		existing time.Duration
		ask      BucketConfig
		askTTL   time.Duration
	}{
		{
			name:     "10s asked 5s",
			create:   func(t *testing.T, b string) { mustCreate(t, js, BucketConfig{Bucket: b, TTL: 10 * time.Second}) },
			existing: 10 * time.Second, ask: BucketConfig{TTL: 5 * time.Second}, askTTL: 5 * time.Second,
		},
		{
			name:     "3s asked default",
			create:   func(t *testing.T, b string) { mustCreate(t, js, BucketConfig{Bucket: b, TTL: 3 * time.Second}) },
			existing: 3 * time.Second, ask: BucketConfig{}, askTTL: DefaultBucketTTL,
		},
		{
			name:     "1500ms asked 2s",
			create:   func(t *testing.T, b string) { mustCreate(t, js, BucketConfig{Bucket: b, TTL: 1500 * time.Millisecond}) },
			existing: 1500 * time.Millisecond, ask: BucketConfig{TTL: 2 * time.Second}, askTTL: 2 * time.Second,
		},
		{
			name: "plain bucket without MaxAge asked default",
			create: func(t *testing.T, b string) {
				if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, Storage: jetstream.MemoryStorage}); err != nil {
					t.Fatal(err)
				}
			},
			existing: 0, ask: BucketConfig{}, askTTL: DefaultBucketTTL,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := uniqueBucket("mismatch")
			c.create(t, name)
			before := bucketStatus(t, mustKV(t, js, name)).StreamInfo().Config

			_, js2 := srv.JetStream()
			ask := c.ask
			ask.Bucket = name
			kv, err := NewKVHelper(js2, nil).GetOrCreateBucket(ctx, ask)
			if !errors.Is(err, ErrBucketMismatch) {
				t.Fatalf("GetOrCreateBucket(%+v) on a bucket with MaxAge %v = %v, want ErrBucketMismatch", ask, c.existing, err)
			}
			if kv != nil {
				t.Fatalf("returned a KeyValue with the error")
			}
			if errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v: a mismatch is not ErrInvalidConfig", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.existing.String()) || !strings.Contains(msg, c.askTTL.String()) || !strings.Contains(msg, name) {
				t.Fatalf("error %q should name the bucket, its MaxAge %v and the TTL asked %v", msg, c.existing, c.askTTL)
			}
			after := bucketStatus(t, mustKV(t, js, name)).StreamInfo().Config
			if after.MaxAge != c.existing {
				t.Fatalf("MaxAge changed from %v to %v", c.existing, after.MaxAge)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("bucket reconfigured:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

func mustCreate(t *testing.T, js jetstream.JetStream, cfg BucketConfig) jetstream.KeyValue {
	t.Helper()
	kv, err := NewKVHelper(js, nil).GetOrCreateBucket(natstest.Context(t), cfg)
	if err != nil {
		t.Fatalf("GetOrCreateBucket(%+v): %v", cfg, err)
	}
	return kv
}

func TestGetOrCreateBucketInvalidConfig(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	ctx := natstest.Context(t)
	var nilHelper *KVHelper
	cases := []struct {
		name   string
		helper *KVHelper
		cfg    BucketConfig
		field  string
	}{
		{"empty name", nil, BucketConfig{Bucket: ""}, "BucketConfig.Bucket"},
		{"dot in name", nil, BucketConfig{Bucket: "bad.name"}, "BucketConfig.Bucket"},
		{"space in name", nil, BucketConfig{Bucket: "bad name"}, "BucketConfig.Bucket"},
		{"wildcard name", nil, BucketConfig{Bucket: "bad*"}, "BucketConfig.Bucket"},
		{"gt name", nil, BucketConfig{Bucket: ">"}, "BucketConfig.Bucket"},
		{"unicode name", nil, BucketConfig{Bucket: "bücket"}, "BucketConfig.Bucket"},
		{"negative TTL", nil, BucketConfig{Bucket: "valid_neg_ttl", TTL: -time.Second}, "BucketConfig.TTL"},
		{"TTL 500ms", nil, BucketConfig{Bucket: "valid_short_ttl", TTL: 500 * time.Millisecond}, "BucketConfig.TTL"},
		{"TTL 1ns", nil, BucketConfig{Bucket: "valid_tiny_ttl", TTL: time.Nanosecond}, "BucketConfig.TTL"},
		{"TTL 999ms", nil, BucketConfig{Bucket: "valid_999ms_ttl", TTL: 999 * time.Millisecond}, "BucketConfig.TTL"},
		{"replicas -1", nil, BucketConfig{Bucket: "valid_replicas_neg", Replicas: -1}, "BucketConfig.Replicas"},
		{"replicas 6", nil, BucketConfig{Bucket: "valid_replicas_6", Replicas: 6}, "BucketConfig.Replicas"},
		{"memory storage with FileStorage", nil, BucketConfig{Bucket: "valid_storage", Storage: jetstream.MemoryStorage, FileStorage: true}, "BucketConfig.Storage"},
		{"nil JetStream", NewKVHelper(nil, nil), BucketConfig{Bucket: "valid_nil_js"}, "KVHelper"},
		{"nil *KVHelper", nilHelper, BucketConfig{Bucket: "valid_nil_helper"}, "KVHelper"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.helper
			if h == nil && c.field != "KVHelper" {
				h = NewKVHelper(js, nil)
			}
			kv, err := h.GetOrCreateBucket(ctx, c.cfg)
			if kv != nil {
				t.Fatalf("returned a KeyValue with error %v", err)
			}
			checkConfigErr(t, err, c.field)
			if validateBucket("", c.cfg.Bucket) == nil {
				// Refused before anything was created.
				if _, err := js.KeyValue(ctx, c.cfg.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
					t.Fatalf("bucket %q exists after a refused configuration (KeyValue: %v)", c.cfg.Bucket, err)
				}
			}
		})
	}
	if !nc.IsConnected() {
		t.Fatal("connection lost")
	}
}

// TestGetOrCreateBucketNameServerRejects: names the regexp accepts but the
// server does not (its stream names, "KV_" + bucket, are at most 255
// bytes) are configuration errors too, and must not cost the connection.
func TestGetOrCreateBucketNameServerRejects(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)
	for _, n := range []int{253, 300, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			nc, js := srv.JetStream()
			name := strings.Repeat("a", n)
			_, err := NewKVHelper(js, nil).GetOrCreateBucket(ctx, BucketConfig{Bucket: name})
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("GetOrCreateBucket(%d-byte name) = %v, want ErrInvalidConfig", n, err)
			}
			if !nc.IsConnected() {
				t.Fatalf("GetOrCreateBucket(%d-byte name) closed the connection: %v", n, nc.LastError())
			}
		})
	}
	t.Run("252 is accepted", func(t *testing.T) {
		_, js := srv.JetStream()
		name := strings.Repeat("z", 252)
		kv, err := NewKVHelper(js, nil).GetOrCreateBucket(ctx, BucketConfig{Bucket: name})
		if err != nil {
			t.Fatalf("GetOrCreateBucket(252-byte name): %v", err)
		}
		if kv.Bucket() != name {
			t.Fatalf("Bucket() = %q", kv.Bucket())
		}
	})
}

func TestGetOrCreateBucketWithoutJetStream(t *testing.T) {
	srv := natstest.Start(t, natstest.WithoutJetStream())
	_, js := srv.JetStream()
	start := time.Now()
	kv, err := NewKVHelper(js, nil).GetOrCreateBucket(natstest.Context(t), BucketConfig{Bucket: "no_js"})
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) || kv != nil || !IsFinal(err) {
		t.Fatalf("GetOrCreateBucket without JetStream = (%v, %v), want an error wrapping jetstream.ErrJetStreamNotEnabled", kv, err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "natskvlease: ") || strings.Count(msg, "natskvlease:") != 1 ||
		!strings.Contains(msg, "not enabled") || strings.Contains(msg, "no responders") {
		t.Errorf("error %q: want one natskvlease: prefix and \"not enabled\"", msg)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("took %v to give up", el)
	}
}

func TestGetOrCreateBucketConcurrentCreate(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)

	type result struct {
		kv  jetstream.KeyValue
		err error
	}
	race := func(t *testing.T, cfgs ...BucketConfig) []result {
		t.Helper()
		helpers := make([]*KVHelper, len(cfgs))
		for i := range cfgs {
			_, js := srv.JetStream()
			helpers[i] = NewKVHelper(js, nil)
		}
		results := make([]result, len(cfgs))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range cfgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				kv, err := helpers[i].GetOrCreateBucket(ctx, cfgs[i])
				results[i] = result{kv, err}
			}()
		}
		close(start)
		wg.Wait()
		return results
	}

	t.Run("same settings", func(t *testing.T) {
		for round := 0; round < 5; round++ {
			name := uniqueBucket("concurrent")
			cfg := BucketConfig{Bucket: name, TTL: 4 * time.Second}
			for i, r := range race(t, cfg, cfg, cfg) {
				if r.err != nil {
					t.Fatalf("round %d: caller %d: %v", round, i, r.err)
				}
				if jetStreamOf(r.kv) == nil || r.kv.Bucket() != name {
					t.Fatalf("round %d: caller %d got an unbound or wrong bucket", round, i)
				}
				if st := bucketStatus(t, r.kv); st.TTL() != cfg.TTL || st.LimitMarkerTTL() != cfg.TTL || st.History() != 1 {
					t.Fatalf("round %d: bucket TTL %v marker TTL %v history %d", round, st.TTL(), st.LimitMarkerTTL(), st.History())
				}
			}
		}
	})
	t.Run("different TTLs", func(t *testing.T) {
		for round := 0; round < 5; round++ {
			name := uniqueBucket("concurrent_diff")
			rs := race(t, BucketConfig{Bucket: name, TTL: 4 * time.Second}, BucketConfig{Bucket: name, TTL: 6 * time.Second})
			var won []int
			for i, r := range rs {
				switch {
				case r.err == nil:
					won = append(won, i)
				case !errors.Is(r.err, ErrBucketMismatch):
					t.Fatalf("round %d: caller %d: %v, want success or ErrBucketMismatch", round, i, r.err)
				}
			}
			if len(won) != 1 {
				t.Fatalf("round %d: %d callers succeeded (%v, %v), want exactly 1", round, len(won), rs[0].err, rs[1].err)
			}
			want := []time.Duration{4 * time.Second, 6 * time.Second}[won[0]]
			if got := bucketStatus(t, rs[won[0]].kv).TTL(); got != want {
				t.Fatalf("round %d: bucket MaxAge %v, want the winner's %v", round, got, want)
			}
		}
	})
}

func TestBucketPolicyLeaseTTL(t *testing.T) {
	const s = time.Second
	type want struct {
		sent, effective time.Duration
		unsupported     bool
	}
	no := want{unsupported: true}
	cases := []struct {
		msgTTL    bool
		maxAge    time.Duration
		requested time.Duration
		want      want
	}{
		// Per-message TTLs, MaxAge 10s.
		{true, 10 * s, 0, want{10 * s, 10 * s, false}},
		{true, 10 * s, 500 * time.Millisecond, no},
		{true, 10 * s, 999 * time.Millisecond, no},
		{true, 10 * s, 1 * s, want{1 * s, 1 * s, false}},
		{true, 10 * s, 1500 * time.Millisecond, want{2 * s, 2 * s, false}},
		{true, 10 * s, 1*s + time.Nanosecond, want{2 * s, 2 * s, false}},
		{true, 10 * s, 9500 * time.Millisecond, want{10 * s, 10 * s, false}},
		{true, 10 * s, 10 * s, want{10 * s, 10 * s, false}},
		{true, 10 * s, 10*s + time.Nanosecond, no},
		{true, 10 * s, 11 * s, no},
		// Per-message TTLs, no MaxAge.
		{true, 0, 0, want{DefaultBucketTTL, DefaultBucketTTL, false}},
		{true, 0, 500 * time.Millisecond, no},
		{true, 0, 1 * s, want{1 * s, 1 * s, false}},
		{true, 0, 1500 * time.Millisecond, want{2 * s, 2 * s, false}},
		{true, 0, 10 * s, want{10 * s, 10 * s, false}},
		{true, 0, 11 * s, want{11 * s, 11 * s, false}},
		{true, 0, time.Hour, want{time.Hour, time.Hour, false}},
		// Per-message TTLs, MaxAge 1500ms: the server caps at MaxAge.
		{true, 1500 * time.Millisecond, 0, want{2 * s, 1500 * time.Millisecond, false}},
		{true, 1500 * time.Millisecond, 500 * time.Millisecond, no},
		{true, 1500 * time.Millisecond, 1 * s, want{1 * s, 1 * s, false}},
		{true, 1500 * time.Millisecond, 1500 * time.Millisecond, want{2 * s, 1500 * time.Millisecond, false}},
		{true, 1500 * time.Millisecond, 10 * s, no},
		{true, 1500 * time.Millisecond, 11 * s, no},
		// MaxAge only: the lease believes by its own TTL, up to MaxAge,
		// and the server expires after MaxAge.
		{false, 10 * s, 0, want{0, 10 * s, false}},
		{false, 10 * s, 500 * time.Millisecond, no},
		{false, 10 * s, 1 * s, want{0, 1 * s, false}},
		{false, 10 * s, 1500 * time.Millisecond, want{0, 1500 * time.Millisecond, false}},
		{false, 10 * s, 10 * s, want{0, 10 * s, false}},
		{false, 10 * s, 11 * s, no},
		{false, 1500 * time.Millisecond, 0, want{0, 1500 * time.Millisecond, false}},
		{false, 1500 * time.Millisecond, 1500 * time.Millisecond, want{0, 1500 * time.Millisecond, false}},
		{false, 1500 * time.Millisecond, 1 * s, want{0, 1 * s, false}},
		{false, 1500 * time.Millisecond, 2 * s, no},
		// Neither: a lease would never expire.
		{false, 0, 0, no},
		{false, 0, 500 * time.Millisecond, no},
		{false, 0, 1 * s, no},
		{false, 0, 1500 * time.Millisecond, no},
		{false, 0, 10 * s, no},
		{false, 0, 11 * s, no},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("msgTTL=%v/maxAge=%v/requested=%v", c.msgTTL, c.maxAge, c.requested), func(t *testing.T) {
			p := bucketPolicy{maxAge: c.maxAge, msgTTL: c.msgTTL}
			sent, eff, err := p.leaseTTL("bkt", c.requested)
			if c.want.unsupported {
				if !errors.Is(err, ErrTTLNotSupported) {
					t.Fatalf("leaseTTL = (%v, %v, %v), want ErrTTLNotSupported", sent, eff, err)
				}
				if !strings.Contains(err.Error(), `"bkt"`) {
					t.Fatalf("error %q does not name the bucket", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("leaseTTL: %v", err)
			}
			if sent != c.want.sent || eff != c.want.effective {
				t.Fatalf("leaseTTL = (sent %v, effective %v), want (%v, %v)", sent, eff, c.want.sent, c.want.effective)
			}
			// What the server enforces: a per-message TTL truncated to
			// whole seconds, capped at MaxAge; without one, MaxAge.
			enforced := c.maxAge
			if c.msgTTL {
				enforced = sent.Truncate(time.Second)
				if c.maxAge > 0 && c.maxAge < enforced {
					enforced = c.maxAge
				}
				if sent%time.Second != 0 {
					t.Fatalf("sent %v is not whole seconds", sent)
				}
			} else if sent != 0 {
				t.Fatalf("sent %v without per-message TTLs", sent)
			}
			if eff > enforced {
				t.Fatalf("effective %v is longer than the server enforces (%v)", eff, enforced)
			}
			// With per-message TTLs the server expires after exactly the
			// lease's TTL; with MaxAge alone a shorter TTL is the lease's
			// own belief, and the server expires later (safe, slower).
			if c.msgTTL && eff != enforced {
				t.Fatalf("effective %v, server enforces %v", eff, enforced)
			}
			if c.maxAge > 0 && eff > c.maxAge {
				t.Fatalf("effective %v beyond MaxAge %v", eff, c.maxAge)
			}
			if c.requested > 0 && eff < c.requested {
				t.Fatalf("effective %v silently shortens the requested %v", eff, c.requested)
			}
		})
	}
}

func TestReadBucketPolicy(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)
	_, js := srv.JetStream()

	leaseBucket := mustCreate(t, js, BucketConfig{Bucket: uniqueBucket("policy"), TTL: 5 * time.Second})
	plainName := uniqueBucket("policy_plain")
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: plainName, TTL: 7 * time.Second, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	foreverName := uniqueBucket("policy_forever")
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: foreverName, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		kv   jetstream.KeyValue
		want bucketPolicy
	}{
		{"lease bucket, bound", leaseBucket, bucketPolicy{maxAge: 5 * time.Second, msgTTL: true, allowMsgTTL: true, bound: true}},
		{"lease bucket, unbound", mustKV(t, js, leaseBucket.Bucket()), bucketPolicy{maxAge: 5 * time.Second, msgTTL: false, allowMsgTTL: true}},
		{"plain bucket, bound", BindJetStream(mustKV(t, js, plainName), js), bucketPolicy{maxAge: 7 * time.Second, msgTTL: false, bound: true}},
		{"plain bucket without MaxAge, bound", BindJetStream(mustKV(t, js, foreverName), js), bucketPolicy{bound: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := readBucketPolicy(ctx, c.kv)
			if err != nil {
				t.Fatalf("readBucketPolicy: %v", err)
			}
			if p != c.want {
				t.Fatalf("policy = %+v, want %+v", p, c.want)
			}
		})
	}
	p, _ := readBucketPolicy(ctx, cases[3].kv)
	if _, _, err := p.leaseTTL(foreverName, 0); !errors.Is(err, ErrTTLNotSupported) {
		t.Fatalf("leaseTTL on a bucket that never expires = %v, want ErrTTLNotSupported", err)
	}
}

func TestBindJetStream(t *testing.T) {
	srv := natstest.Start(t)
	_, js1 := srv.JetStream()
	_, js2 := srv.JetStream()
	raw := mustKV(t, js1, mustCreate(t, js1, BucketConfig{Bucket: uniqueBucket("bind")}).Bucket())

	if jetStreamOf(raw) != nil {
		t.Fatal("jetStreamOf(unbound) != nil")
	}
	if BindJetStream(nil, js1) != nil {
		t.Fatal("BindJetStream(nil, js) != nil")
	}
	if got := BindJetStream(raw, nil); got != raw {
		t.Fatal("BindJetStream(kv, nil) did not return kv unchanged")
	}
	b1 := BindJetStream(raw, js1)
	if jetStreamOf(b1) != js1 || b1.Bucket() != raw.Bucket() {
		t.Fatal("BindJetStream(kv, js1) not bound to js1")
	}
	b2 := BindJetStream(b1, js2)
	if jetStreamOf(b2) != js2 {
		t.Fatal("rebinding did not take the new JetStream")
	}
	if inner := b2.(*boundKV).KeyValue; inner != raw {
		t.Fatalf("rebinding nested the wrapper: inner is %T", inner)
	}
}

// TestBucketPolicyReusedBriefly: leases created together on one bound
// bucket ask the server for its policy once, and ask again once the
// cached answer is older than policyCacheFor.
func TestBucketPolicyReusedBriefly(t *testing.T) {
	srv := natstest.Start(t)
	ctx := natstest.Context(t)
	_, js := srv.JetStream()
	kv := mustCreate(t, js, BucketConfig{Bucket: uniqueBucket("cached"), TTL: 5 * time.Second})

	sub := spyAll(t, srv)
	read := func() {
		t.Helper()
		if p, err := readBucketPolicy(ctx, kv); err != nil || p.maxAge != 5*time.Second {
			t.Fatalf("readBucketPolicy = %+v, %v", p, err)
		}
	}
	// asked counts the stream-info requests the reads sent: up to a
	// sentinel published after them on the same connection, which the
	// spy receives after them.
	asked := func() int {
		t.Helper()
		if err := js.Conn().Publish("sentinel", nil); err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("spy: %v", err)
			}
			switch {
			case m.Subject == "sentinel":
				return n
			case strings.HasPrefix(m.Subject, "$JS.API.STREAM.INFO."):
				n++
			}
		}
	}
	read()
	for range 10 {
		read()
	}
	if n := asked(); n != 1 {
		t.Fatalf("11 policy reads within %v sent %d stream-info requests; want 1", policyCacheFor, n)
	}
	b := kv.(*boundKV)
	old := *b.policy.Load()
	old.readAt = old.readAt.Add(-policyCacheFor)
	b.policy.Store(&old)
	read()
	if n := asked(); n != 1 {
		t.Fatalf("a read after the cache aged sent %d stream-info requests; want 1", n)
	}
}
