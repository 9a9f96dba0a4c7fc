package dlock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// HolderInfo describes the holder of a lock, as stored in the bucket.
type HolderInfo struct {
	// Owner identifies one holding: a random nonce drawn for each Lock or
	// TryLock call, so two holdings never share it, even in one process.
	Owner string
	// Hostname and PID are the holder's machine and process.
	Hostname string
	PID      int
	// AcquiredAt is when the holding began, by the holder's clock (by the
	// server's until the first renewal).
	AcquiredAt time.Time
	// Token is the holding's fencing token (see Lock.Token).
	Token uint64
	// Revision is the key's latest revision: the acquisition or the last
	// renewal.
	Revision uint64
	// TTL is the holder's lock TTL (holders sharing a bucket may use
	// different TTLs).
	TTL time.Duration
	// TimeLeft is how long the key lives without another renewal, from
	// the server's timestamp of Revision plus the TTL, clamped at 0. It
	// is approximate: it compares the server's clock with this one.
	TimeLeft time.Duration
}

// record is the JSON value stored under a held key. The acquiring write
// carries no token and no acquired_at (neither is known yet): its revision
// is the token and its timestamp the acquisition time. Renewals carry both.
type record struct {
	Owner      string    `json:"owner"`
	Hostname   string    `json:"hostname,omitempty"`
	PID        int       `json:"pid"`
	AcquiredAt time.Time `json:"acquired_at,omitzero"`
	Token      uint64    `json:"token,omitempty"`
	// TTL is the holder's lock TTL, for Holder's TimeLeft; absent in
	// values written by older versions.
	TTL time.Duration `json:"ttl,omitempty"`
}

// newOwner returns a random 128-bit nonce in hex.
func newOwner() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b)
}

func (r record) encode() []byte {
	b, _ := json.Marshal(r) // cannot fail: plain fields only
	return b
}

// ownedBy returns the lease's IsOwner: a stored value is ours when its
// owner field is, whatever else changed.
func ownedBy(owner string) func([]byte) bool {
	return func(value []byte) bool {
		var r record
		return json.Unmarshal(value, &r) == nil && r.Owner == owner
	}
}

// holderOf decodes an entry of a held key; ttl is used when the value
// does not carry the holder's own.
func holderOf(e jetstream.KeyValueEntry, ttl time.Duration, now time.Time) (HolderInfo, error) {
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil || r.Owner == "" {
		return HolderInfo{}, fmt.Errorf("dlock: key %q holds a value not written by dlock (revision %d)", e.Key(), e.Revision())
	}
	if r.TTL > 0 {
		ttl = r.TTL
	}
	h := HolderInfo{
		Owner:      r.Owner,
		Hostname:   r.Hostname,
		PID:        r.PID,
		AcquiredAt: r.AcquiredAt,
		Token:      r.Token,
		TTL:        ttl,
		Revision:   e.Revision(),
		TimeLeft:   max(e.Created().Add(ttl).Sub(now), 0),
	}
	if h.Token == 0 { // the acquiring write itself
		h.Token = e.Revision()
	}
	if h.AcquiredAt.IsZero() {
		h.AcquiredAt = e.Created()
	}
	return h, nil
}

// Holder returns who holds key, for operators: the owner's identity, the
// fencing token, the latest revision and the time left before the key
// expires unless renewed. A free key gives an error wrapping
// ErrNotLocked. The read may be answered by any replica, so it can lag
// behind the latest write by a moment; do not use it to decide who may
// act (the holder's own Lock does that).
func (c *Client) Holder(ctx context.Context, key string) (HolderInfo, error) {
	if err := checkKey(key); err != nil {
		return HolderInfo{}, err
	}
	ctx, end, err := c.begin(ctx)
	if err != nil {
		return HolderInfo{}, fmt.Errorf("dlock: holder %q: %w", key, err)
	}
	defer end()
	e, err := c.ops.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return HolderInfo{}, fmt.Errorf("dlock: %q: %w", key, ErrNotLocked)
	case err != nil:
		return HolderInfo{}, c.fail("holder", key, err)
	}
	return holderOf(e, c.ttl, time.Now())
}

// ReadHolder returns who holds key in bucket, as Client.Holder does, for
// a process that only looks: it opens no Client, never creates the
// bucket and needs only read permissions (see the README). A missing
// bucket or a free key gives an error wrapping ErrNotLocked.
func ReadHolder(ctx context.Context, js jetstream.JetStream, bucket, key string) (HolderInfo, error) {
	kv, err := natskvlease.NewKVHelper(js, nil).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{Bucket: bucket, NoCreate: true})
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return HolderInfo{}, fmt.Errorf("dlock: %q: no bucket %q: %w", key, bucket, ErrNotLocked)
	case err != nil:
		return HolderInfo{}, fmt.Errorf("dlock: bucket %q: %w", bucket, err)
	}
	e, err := natskvlease.NewKVOps(kv, nil).Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return HolderInfo{}, fmt.Errorf("dlock: %q: %w", key, ErrNotLocked)
	case err != nil:
		return HolderInfo{}, fmt.Errorf("dlock: holder %q: %w", key, err)
	}
	return holderOf(e, DefaultTTL, time.Now())
}
