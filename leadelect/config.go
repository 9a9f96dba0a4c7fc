package leadelect

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/natskvlease/natskvlease"
)

const (
	// DefaultBucket is the bucket used when Config.Bucket is empty.
	DefaultBucket = "leadelect"
	// DefaultTTL is the lease TTL used when Config.TTL is zero.
	DefaultTTL = 10 * time.Second
	// MinTTL is the shortest TTL: the server counts per-message TTLs in
	// whole seconds.
	MinTTL = time.Second
	// DefaultRenewRatio is the fraction of the TTL between renewals used
	// when Config.RenewRatio is zero.
	DefaultRenewRatio = 1.0 / 3
	// MaxRenewRatio is the largest RenewRatio. Larger ratios up to it are
	// accepted, and the lease caps when it renews so that a failed
	// renewal can be retried before its safety deadline (see
	// natskvlease.LeaseConfig.RenewRatio).
	MaxRenewRatio = 1.0
)

// Config configures an Election.
type Config struct {
	// Bucket is the KeyValue bucket holding the election's key: letters,
	// digits, '-' and '_'. Empty means DefaultBucket. It is created on
	// first use if it does not exist (see Run).
	Bucket string
	// Key is the election's key in the bucket: letters, digits and
	// -/_=. with non-empty dot-separated tokens. Required. Every
	// candidate of one election uses the same Bucket and Key.
	Key string
	// ID names this candidate; it is what other candidates and observers
	// see as the leader's ID. Required. It need not be unique: each
	// Election also stores a random nonce, so two candidates configured
	// with the same ID never both lead.
	ID string
	// TTL is how long leadership survives its holder's silence: a leader
	// that dies is replaced within about one TTL. Zero means DefaultTTL;
	// otherwise at least MinTTL. Fractions of a second are rounded up by
	// the server's whole-second TTLs.
	TTL time.Duration
	// RenewRatio is the fraction of TTL between renewals, in
	// (0, MaxRenewRatio]. Zero means DefaultRenewRatio.
	RenewRatio float64
	// KeepOnCancel keeps the key when Run's context ends while leading,
	// so that leadership lapses only after TTL (or is resumed by a new Run
	// of the same Election before that). The default releases it, so that
	// another candidate takes over within milliseconds.
	KeepOnCancel bool
	// FileStorage creates the bucket on disk rather than in memory.
	// Only used when this Election creates the bucket.
	FileStorage bool
	// Replicas is the bucket's replica count, 1 to 5; zero means 1. Only
	// used when this Election creates the bucket.
	Replicas int
	// Logger receives the election's logs. Nil discards them.
	Logger *slog.Logger
	// Metrics receives the election's events: its lease's (see
	// natskvlease.Metrics), every new leader this candidate sees
	// (EventLeaderChanged) and the length of each of its terms
	// (EventTermEnded). Nil reports nothing.
	Metrics natskvlease.Metrics
}

// ObserverConfig configures an Observer.
type ObserverConfig struct {
	// Bucket is the election's bucket; empty means DefaultBucket.
	Bucket string
	// Key is the election's key. Required.
	Key string
	// Logger receives the observer's logs. Nil discards them.
	Logger *slog.Logger
}

// normalize fills in defaults and checks every field, returning an
// error wrapping natskvlease.ErrInvalidConfig that names the first bad
// field.
func (c Config) normalize() (Config, error) {
	var err error
	if c.Bucket, c.Key, err = checkLocation("Config", c.Bucket, c.Key); err != nil {
		return c, err
	}
	switch {
	case c.ID == "":
		return c, configError("Config.ID", "is empty; it names this candidate")
	case !utf8.ValidString(c.ID):
		return c, configError("Config.ID", "%q is not valid UTF-8", c.ID)
	}
	if c.TTL, err = checkTTL(c.TTL); err != nil {
		return c, err
	}
	if c.RenewRatio, err = checkRenewRatio(c.RenewRatio); err != nil {
		return c, err
	}
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return c, configError("Config.Replicas", "%d is outside 1..5", c.Replicas)
	case c.Replicas == 0:
		c.Replicas = 1
	}
	c.Logger = orDiscard(c.Logger)
	return c, nil
}

func (c ObserverConfig) normalize() (ObserverConfig, error) {
	var err error
	c.Bucket, c.Key, err = checkLocation("ObserverConfig", c.Bucket, c.Key)
	c.Logger = orDiscard(c.Logger)
	return c, err
}

func checkLocation(cfg, bucket, key string) (string, string, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	if err := natskvlease.ValidateBucket(bucket); err != nil {
		return bucket, key, inField(cfg+".Bucket", err)
	}
	if err := natskvlease.ValidateKey(key); err != nil {
		return bucket, key, inField(cfg+".Key", err)
	}
	return bucket, key, nil
}

// inField names our field in a validation error from natskvlease.
func inField(field string, err error) error {
	var ce *natskvlease.ConfigError
	if errors.As(err, &ce) {
		return &natskvlease.ConfigError{Package: "leadelect", Field: field, Reason: ce.Reason}
	}
	return err
}

func checkTTL(ttl time.Duration) (time.Duration, error) {
	switch {
	case ttl == 0:
		return DefaultTTL, nil
	case ttl < 0:
		return ttl, configError("Config.TTL", "%v is negative", ttl)
	case ttl < MinTTL:
		return ttl, configError("Config.TTL", "%v is below %v, the server's TTL resolution", ttl, MinTTL)
	}
	return ttl, nil
}

func checkRenewRatio(r float64) (float64, error) {
	switch {
	case r == 0:
		return DefaultRenewRatio, nil
	case r != r || r < 0 || r > MaxRenewRatio:
		return r, configError("Config.RenewRatio", "%v is outside (0, %v]", r, MaxRenewRatio)
	}
	return r, nil
}

func configError(field, format string, args ...any) error {
	return &natskvlease.ConfigError{
		Package: "leadelect",
		Field:   field,
		Reason:  fmt.Sprintf(format, args...),
	}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
