package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestCheckServerVersion(t *testing.T) {
	cases := []struct {
		version     string
		ok          bool
		unsupported bool // errors.Is(err, ErrNatsVersionNotSupported)
	}{
		{"2.11.0", true, false},
		{"2.11.0-beta.1", true, false},
		{"2.11.0-RC.2", true, false},
		{"2.11.0+build.7", true, false},
		{"2.11.9", true, false},
		{"2.12.0", true, false},
		{"2.15.2", true, false},
		{"3.0.0", true, false},
		{"v2.12.1", true, false},
		{" 2.11.0 ", true, false},
		{"10.0.0", true, false},
		{"2.100.0", true, false},

		{"2.10.22", false, true},
		{"2.10.99-beta.1", false, true},
		{"v2.10.0", false, true},
		{"2.9.0", false, true},
		{"2.0.0", false, true},
		{"1.99.99", false, true},
		{"0.0.0", false, true},

		{"", false, false},
		{"abc", false, false},
		{"2.x.1", false, false},
		{"2.11", false, false},
		{"2", false, false},
		{"2.11.0.1", false, false},
		{"2.11.", false, false},
		{".11.0", false, false},
		{"2..0", false, false},
		{"-2.11.0", false, false},
		{"2.-11.0", false, false},
		{"2.+11.0", false, false},
		{"vv2.11.0", false, false},
		{"2.11.x", false, false},
		{"２.11.0", false, false}, // fullwidth digit
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%q", c.version), func(t *testing.T) {
			err := checkServerVersion(c.version)
			if c.ok {
				if err != nil {
					t.Fatalf("checkServerVersion(%q) = %v, want nil", c.version, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkServerVersion(%q) = nil, want an error", c.version)
			}
			if got := errors.Is(err, ErrNatsVersionNotSupported); got != c.unsupported {
				t.Fatalf("checkServerVersion(%q) = %v; errors.Is(ErrNatsVersionNotSupported) = %v, want %v", c.version, err, got, c.unsupported)
			}
			if errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("checkServerVersion(%q) = %v: a server version is not a configuration error", c.version, err)
			}
			if !strings.Contains(err.Error(), strings.TrimSpace(c.version)) {
				t.Fatalf("error %q does not name the version %q", err, c.version)
			}
		})
	}
}

func TestValidateNatsVersion(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	if v := nc.ConnectedServerVersion(); !strings.HasPrefix(v, "2.") {
		t.Fatalf("embedded server reports version %q", v)
	}
	if err := ValidateNatsVersion(nc); err != nil {
		t.Fatalf("ValidateNatsVersion(embedded %s) = %v, want nil", nc.ConnectedServerVersion(), err)
	}

	err := ValidateNatsVersion(nil)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("ValidateNatsVersion(nil) = %v, want ErrInvalidConfig", err)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "nats.Conn" {
		t.Fatalf("ValidateNatsVersion(nil) = %#v, want a *ConfigError for nats.Conn", err)
	}
	if errors.Is(err, ErrNatsVersionNotSupported) {
		t.Fatalf("ValidateNatsVersion(nil) = %v must not claim an old server", err)
	}

	closed := srv.Connect()
	closed.Close()
	err = ValidateNatsVersion(closed)
	if err == nil || errors.Is(err, ErrNatsVersionNotSupported) {
		t.Fatalf("ValidateNatsVersion(closed connection) = %v, want an error that is not ErrNatsVersionNotSupported", err)
	}
}

// slogRecordCounter is a slog.Handler that counts the records it is
// given, at every level.
type slogRecordCounter struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *slogRecordCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *slogRecordCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}
func (h *slogRecordCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *slogRecordCounter) WithGroup(string) slog.Handler      { return h }

func (h *slogRecordCounter) snapshot() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]slog.Record(nil), h.records...)
}

func TestValidateJetStreamEnabled(t *testing.T) {
	t.Run("enabled", func(t *testing.T) {
		srv := natstest.Start(t)
		_, js := srv.JetStream()
		h := &slogRecordCounter{}
		if err := ValidateJetStreamEnabled(natstest.Context(t), js, slog.New(h)); err != nil {
			t.Fatalf("ValidateJetStreamEnabled = %v, want nil", err)
		}
		if n := len(h.snapshot()); n != 0 {
			t.Fatalf("logged %d records on success, want 0", n)
		}
		if err := ValidateJetStreamEnabled(natstest.Context(t), js, nil); err != nil {
			t.Fatalf("ValidateJetStreamEnabled(nil logger) = %v, want nil", err)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		srv := natstest.Start(t, natstest.WithoutJetStream())
		_, js := srv.JetStream()
		h := &slogRecordCounter{}
		err := ValidateJetStreamEnabled(natstest.Context(t), js, slog.New(h))
		if err == nil {
			t.Fatal("ValidateJetStreamEnabled on a server without JetStream = nil, want an error")
		}
		if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			t.Fatalf("err = %v, want it to match ErrJetStreamNotEnabled or ErrJetStreamNotEnabledForAccount", err)
		}
		if errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("err = %v: a server without JetStream is not a configuration error", err)
		}
		recs := h.snapshot()
		if len(recs) != 1 {
			t.Fatalf("logged %d records, want exactly 1", len(recs))
		}
		if recs[0].Level != slog.LevelError {
			t.Fatalf("logged at %v, want ERROR", recs[0].Level)
		}

		// A nil logger is allowed and only skips the log line.
		if err := ValidateJetStreamEnabled(natstest.Context(t), js, nil); err == nil {
			t.Fatal("ValidateJetStreamEnabled(nil logger) on a server without JetStream = nil")
		}
	})
	t.Run("nil JetStream", func(t *testing.T) {
		h := &slogRecordCounter{}
		err := ValidateJetStreamEnabled(context.Background(), nil, slog.New(h))
		if !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("ValidateJetStreamEnabled(nil) = %v, want ErrInvalidConfig", err)
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != "jetstream.JetStream" {
			t.Fatalf("err = %#v, want a *ConfigError for jetstream.JetStream", err)
		}
	})
}

// refKeyValid is the key rule written out plainly: non-empty tokens
// separated by '.', each made of ASCII letters, digits and -/_=.
func refKeyValid(key string) bool {
	if key == "" {
		return false
	}
	for _, tok := range strings.Split(key, ".") {
		if tok == "" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			case c == '-', c == '/', c == '_', c == '=':
			default:
				return false
			}
		}
	}
	return true
}

// refBucketValid is the bucket rule written out plainly: ASCII letters,
// digits, '-' and '_', and short enough for the server's 255-byte stream
// name limit once prefixed with "KV_".
func refBucketValid(bucket string) bool {
	if bucket == "" || len(bucket) > 255-len("KV_") {
		return false
	}
	for i := 0; i < len(bucket); i++ {
		c := bucket[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// shortQ quotes s for a failure message, cut short when long.
func shortQ(s string) string {
	if len(s) <= 40 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q...(%d bytes)", s[:20], len(s))
}

func checkConfigErr(t *testing.T, err error, field string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v, want it to wrap ErrInvalidConfig", err)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %#v, want a *ConfigError", err)
	}
	if ce.Field != field {
		t.Fatalf("ConfigError.Field = %q, want %q", ce.Field, field)
	}
	if !strings.Contains(err.Error(), field) {
		t.Fatalf("error %q does not name the field %q", err, field)
	}
}

var keyCases = []struct {
	key   string
	valid bool
}{
	{"a", true},
	{"lease", true},
	{"a.b", true},
	{"a.b.c", true},
	{"leases.node-1", true},
	{"A-Z_0=9/x", true},
	{"-", true},
	{"_", true},
	{"=", true},
	{"/", true},
	{"0", true},
	{"a/b/c", true},
	{"x=y.z", true},
	{strings.Repeat("k", 1000), true},

	{"", false},
	{".", false},
	{"..", false},
	{".a", false},
	{"a.", false},
	{"a..b", false},
	{"a.b.", false},
	{" ", false},
	{"a b", false},
	{" a", false},
	{"a ", false},
	{"a\tb", false},
	{"a\nb", false},
	{"a\n", false},
	{"a\r", false},
	{"a\x00b", false},
	{"*", false},
	{"a*", false},
	{"a.*", false},
	{">", false},
	{"a.>", false},
	{"a,b", false},
	{"a:b", false},
	{"a+b", false},
	{"a\\b", false},
	{"$KV", false},
	{"é", false},
	{"ключ", false},
	{"a\u00a0b", false},
	{"\xff", false},
	{"键.值", false},
}

func TestValidateKey(t *testing.T) {
	for _, c := range keyCases {
		t.Run(shortQ(c.key), func(t *testing.T) {
			if got := refKeyValid(c.key); got != c.valid {
				t.Fatalf("test table disagrees with the reference rule for %s", shortQ(c.key))
			}
			err := validateKey("LeaseConfig.Key", c.key)
			if c.valid {
				if err != nil {
					t.Fatalf("validateKey(%s) = %v, want nil", shortQ(c.key), err)
				}
				return
			}
			if err == nil {
				t.Fatalf("validateKey(%s) = nil, want an error", shortQ(c.key))
			}
			checkConfigErr(t, err, "LeaseConfig.Key")
		})
	}
}

var bucketCases = []struct {
	bucket string
	valid  bool
}{
	{"a", true},
	{"leases", true},
	{"LEASES_1", true},
	{"my-bucket", true},
	{"_", true},
	{"-", true},
	{"0", true},
	{strings.Repeat("b", 252), true},

	{"", false},
	{"bad.name", false},
	{".", false},
	{"bad name", false},
	{" ", false},
	{"a/b", false},
	{"a=b", false},
	{"a\\b", false},
	{"*", false},
	{"a*", false},
	{">", false},
	{"a>", false},
	{"a\nb", false},
	{"a\n", false},
	{"a\x00", false},
	{"é", false},
	{"ведро", false},
	{"\xff", false},
	{strings.Repeat("b", 253), false},
	{strings.Repeat("a", 300), false},
	{strings.Repeat("a", 5000), false},
}

func TestValidateBucket(t *testing.T) {
	for _, c := range bucketCases {
		t.Run(shortQ(c.bucket), func(t *testing.T) {
			if got := refBucketValid(c.bucket); got != c.valid {
				t.Fatalf("test table disagrees with the reference rule for %s", shortQ(c.bucket))
			}
			err := validateBucket("BucketConfig.Bucket", c.bucket)
			if c.valid {
				if err != nil {
					t.Fatalf("validateBucket(%s) = %v, want nil", shortQ(c.bucket), err)
				}
				return
			}
			if err == nil {
				t.Fatalf("validateBucket(%s) = nil, want an error", shortQ(c.bucket))
			}
			checkConfigErr(t, err, "BucketConfig.Bucket")
		})
	}
}

// fuzzServerKeyMax bounds the keys sent to the server: nats.go closes the
// connection for good when a protocol line exceeds the server's
// max_control_line (4096 bytes by default), which a key of ~4000 bytes
// does. validateKey sets no length limit (nor does nats.go).
const fuzzServerKeyMax = 1024

// FuzzValidateKey checks validateKey against the plain reference rule,
// and that every key it accepts is accepted by nats.go and the server:
// it can be written and read back.
func FuzzValidateKey(f *testing.F) {
	for _, c := range keyCases {
		f.Add(c.key)
	}
	srv := natstest.Start(f)
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	f.Cleanup(cancel)
	kv, err := NewKVHelper(js, nil).GetOrCreateBucket(ctx, BucketConfig{Bucket: "fuzz_keys", TTL: time.Minute})
	if err != nil {
		f.Fatalf("GetOrCreateBucket: %v", err)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := validateKey("key", key)
		if want := refKeyValid(key); (err == nil) != want {
			t.Fatalf("validateKey(%s) = %v, reference rule says valid=%v", shortQ(key), err, want)
		}
		if err != nil {
			checkConfigErr(t, err, "key")
			return
		}
		if len(key) > fuzzServerKeyMax {
			return
		}
		rev, err := kv.Put(ctx, key, []byte(key))
		if err != nil {
			t.Fatalf("Put(%q) of a key validateKey accepts: %v", key, err)
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrInvalidKey) {
			t.Fatalf("nats.go refuses key %q that validateKey accepts", key)
		}
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if e.Revision() != rev || string(e.Value()) != key || e.Key() != key {
			t.Fatalf("Get(%q) = rev %d value %q key %q, want rev %d", key, e.Revision(), e.Value(), e.Key(), rev)
		}
	})
}

// FuzzValidateBucket checks validateBucket against the plain reference
// rule, and that the server creates every bucket it accepts.
func FuzzValidateBucket(f *testing.F) {
	for _, c := range bucketCases {
		f.Add(c.bucket)
	}
	srv := natstest.Start(f)
	nc, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	f.Cleanup(cancel)
	h := NewKVHelper(js, nil)
	f.Fuzz(func(t *testing.T, bucket string) {
		err := validateBucket("BucketConfig.Bucket", bucket)
		if want := refBucketValid(bucket); (err == nil) != want {
			t.Fatalf("validateBucket(%s) = %v, reference rule says valid=%v", shortQ(bucket), err, want)
		}
		if err != nil {
			checkConfigErr(t, err, "BucketConfig.Bucket")
			// Through GetOrCreateBucket too, without a round trip that
			// could break the connection.
			if _, err := h.GetOrCreateBucket(ctx, BucketConfig{Bucket: bucket}); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("GetOrCreateBucket(%s) = %v, want ErrInvalidConfig", shortQ(bucket), err)
			}
			if !nc.IsConnected() {
				t.Fatalf("connection lost after GetOrCreateBucket(%s)", shortQ(bucket))
			}
			return
		}
		kv, err := h.GetOrCreateBucket(ctx, BucketConfig{Bucket: bucket, TTL: time.Minute})
		if err != nil {
			t.Fatalf("GetOrCreateBucket(%s) of a name validateBucket accepts: %v", shortQ(bucket), err)
		}
		if kv.Bucket() != bucket {
			t.Fatalf("bucket name %q, want %q", kv.Bucket(), bucket)
		}
		if err := js.DeleteKeyValue(ctx, bucket); err != nil {
			t.Fatalf("DeleteKeyValue(%q): %v", bucket, err)
		}
	})
}
