package natskvlease

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseCallbacks are told of a lease's changes. Each may be nil.
//
// Callbacks run one at a time, in event order (OnAcquired, OnRenewed...,
// then OnLost or OnReleased), on a goroutine the Lease starts for them:
// never the caller's goroutine and never the renewal loop's. A slow
// callback therefore delays the callbacks after it, never a renewal; and
// by the time a callback runs the state it reports may have moved on
// (check IsHeld, or use Done for a signal with no delay).
type LeaseCallbacks struct {
	// OnAcquired is called when the lease is acquired.
	OnAcquired func()
	// OnLost is called once per holding that ends without Release: a
	// renewal found another owner, or the safety deadline passed.
	OnLost func()
	// OnRenewed is called after each successful renewal.
	OnRenewed func()
	// OnReleased is called once per holding ended by Release,
	// StopCamping, or the end of RunCamping's context.
	OnReleased func()
}

// LeaseConfig configures a Lease.
type LeaseConfig struct {
	// Key is the key of the lease in the bucket: letters, digits and
	// -/_=. with non-empty dot-separated tokens.
	Key string
	// TTL is how long the lease lives on the server after the last
	// acquire or renew. Zero means the bucket's MaxAge, or
	// DefaultBucketTTL if it has none. It must be at least one second,
	// and no more than the bucket's MaxAge; the server counts per-message
	// TTLs in whole seconds, so a fraction is rounded up.
	TTL time.Duration
	// RenewRatio is the fraction of TTL between renewals, in (0, 1]. Zero
	// means 1/3. Renewals are never scheduled later than leaves room for
	// two attempts before the safety deadline at nine tenths of the TTL,
	// each attempt bounded by a quarter of the TTL (at least 250ms, at
	// most 2s): so ratios above 0.4 are capped at 0.4 for TTLs up to 8s,
	// and at 0.9 − 4s/TTL above that.
	RenewRatio float64
	// Value is stored under Key while the lease is held. It identifies
	// the holder and must be unique to it: two leases with the same Value
	// on one key are taken for the same holder.
	Value []byte
	// IsOwner reports whether a stored value is this holder's. Nil means
	// bytes.Equal with Value.
	IsOwner func(value []byte) bool
	// Callbacks are told of changes; see LeaseCallbacks.
	Callbacks LeaseCallbacks
	// Logger receives the lease's logs. Nil discards them.
	Logger *slog.Logger
	// Metrics receives the lease's events (operations, acquisitions,
	// renewals and their margin, losses by cause, releases, handoffs).
	// Nil reports nothing. See Metrics.
	Metrics Metrics
}

const defaultRenewRatio = 1.0 / 3

func (c LeaseConfig) validate(kv jetstream.KeyValue) error {
	if kv == nil {
		return configError("KeyValue", "is nil")
	}
	if err := validateKey("LeaseConfig.Key", c.Key); err != nil {
		return err
	}
	if len(c.Value) == 0 {
		return configError("LeaseConfig.Value", "is empty; it identifies the holder")
	}
	if c.TTL < 0 {
		return configError("LeaseConfig.TTL", "%v is negative", c.TTL)
	}
	if c.RenewRatio < 0 || c.RenewRatio > 1 || c.RenewRatio != c.RenewRatio {
		return configError("LeaseConfig.RenewRatio", "%v is outside (0, 1]", c.RenewRatio)
	}
	return nil
}
