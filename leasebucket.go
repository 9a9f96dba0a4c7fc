package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucketConfig says which bucket OpenLeaseBucket opens, and for
// leases of which TTL.
type LeaseBucketConfig struct {
	// Bucket is the bucket name: letters, digits, '-' and '_'.
	Bucket string
	// TTL is the TTL the caller's leases use. An existing bucket is used
	// only if it can enforce it; zero checks no TTL (for observers).
	TTL time.Duration
	// FileStorage, for a bucket created here, stores it on disk.
	FileStorage bool
	// Replicas, for a bucket created here, is its number of replicas (1
	// to 5). Zero means 1.
	Replicas int
	// NoCreate opens an existing bucket only: a missing one gives an
	// error wrapping jetstream.ErrBucketNotFound.
	NoCreate bool
}

// OpenLeaseBucket opens a bucket for leases of cfg.TTL, creating it if it
// is missing (unless cfg.NoCreate). It is the one rule dlock, leadelect
// and natslease share, so that all of them can use one bucket whatever
// TTL each asks for:
//
//   - An existing bucket is used for any TTL it can enforce: it leaves
//     expiry markers (LimitMarkerTTL set, which allows per-message TTLs),
//     and its MaxAge, if it has one, is at least the TTL. Otherwise the
//     error wraps ErrBucketMismatch and names the fix. It is never
//     reconfigured.
//   - A bucket created here has no MaxAge, History 1, and LimitMarkerTTL
//     set, so it hosts leases of any TTL from one second up: every lease
//     write and purge marker carries the lease's own TTL, and the markers
//     the server writes at expiry carry LimitMarkerTTL (the creator's
//     TTL), so nothing lingers.
//
// The returned KeyValue is bound to the helper's JetStream (BindJetStream).
// KVHelper.GetOrCreateBucket keeps its own meaning: one MaxAge per bucket.
func (h *KVHelper) OpenLeaseBucket(ctx context.Context, cfg LeaseBucketConfig) (jetstream.KeyValue, error) {
	if h == nil || h.js == nil {
		return nil, configError("KVHelper", "has no JetStream (NewKVHelper was given nil)")
	}
	if err := validateBucket("LeaseBucketConfig.Bucket", cfg.Bucket); err != nil {
		return nil, err
	}
	switch {
	case cfg.TTL < 0:
		return nil, configError("LeaseBucketConfig.TTL", "%v is negative", cfg.TTL)
	case cfg.TTL > 0 && cfg.TTL < time.Second:
		return nil, configError("LeaseBucketConfig.TTL", "%v is below the server's one-second TTL resolution", cfg.TTL)
	case cfg.Replicas < 0 || cfg.Replicas > 5:
		return nil, configError("LeaseBucketConfig.Replicas", "%d is outside 1..5", cfg.Replicas)
	}
	kv, err := Retry(ctx, func() (jetstream.KeyValue, error) { return h.openLease(ctx, cfg) })
	if err != nil {
		return nil, err
	}
	kv = BindJetStream(kv, h.js)
	return kv, checkLeaseBucket(ctx, kv, cfg.TTL)
}

func (h *KVHelper) openLease(ctx context.Context, cfg LeaseBucketConfig) (jetstream.KeyValue, error) {
	api := subjectsOf(h.js.Options(), cfg.Bucket).api
	// Each request is bounded: a request the server drops (a permission
	// violation, a leader change) would otherwise wait for ctx.
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	kv, err := h.js.KeyValue(ictx, cfg.Bucket)
	if err != nil {
		err = permissionCause(h.js.Conn(), api+"STREAM.INFO.KV_"+cfg.Bucket, err)
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) || cfg.NoCreate {
		if err != nil {
			return nil, h.bucketError(ctx, cfg.Bucket, err)
		}
		return kv, nil
	}
	markers := max(cfg.TTL, DefaultBucketTTL/10).Truncate(time.Second)
	if markers < cfg.TTL {
		markers += time.Second
	}
	storage := jetstream.MemoryStorage
	if cfg.FileStorage {
		storage = jetstream.FileStorage
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, err = h.js.CreateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket:         cfg.Bucket,
		History:        1,
		Storage:        storage,
		Replicas:       max(cfg.Replicas, 1),
		LimitMarkerTTL: markers,
	})
	switch {
	case err == nil:
		h.logger.DebugContext(ctx, "natskvlease: created lease bucket", "bucket", cfg.Bucket, "marker_ttl", markers)
		return kv, nil
	case errors.Is(err, jetstream.ErrBucketExists): // created meanwhile
		return h.js.KeyValue(cctx, cfg.Bucket)
	}
	return nil, h.bucketError(ctx, cfg.Bucket, permissionCause(h.js.Conn(), api+"STREAM.CREATE.KV_"+cfg.Bucket, err))
}

// checkLeaseBucket applies OpenLeaseBucket's rule to an open bucket: the
// lease's own TTL rule (per-message TTLs, MaxAge at least the TTL; see
// bucketPolicy.leaseTTL), plus expiry markers, without which a dead
// holder's expiry would wake no waiter.
func checkLeaseBucket(ctx context.Context, kv jetstream.KeyValue, ttl time.Duration) error {
	p, err := readBucketPolicy(ctx, kv)
	if err != nil {
		return err
	}
	st, err := Retry(ctx, func() (jetstream.KeyValueStatus, error) { return kv.Status(ctx) })
	if err != nil {
		return fmt.Errorf("natskvlease: reading bucket %q: %w", kv.Bucket(), err)
	}
	if st.LimitMarkerTTL() <= 0 {
		return fmt.Errorf("%w: bucket %q has no LimitMarkerTTL, so expiries leave no marker to wake waiters (and leases cannot carry their own TTL); use another bucket, or delete this one and let dlock, leadelect or natslease create it",
			ErrBucketMismatch, kv.Bucket())
	}
	if ttl == 0 {
		return nil
	}
	if p.maxAge > 0 && ttl > p.maxAge {
		return fmt.Errorf("%w (%w): bucket %q has MaxAge %v, below the TTL %v asked for, so the server would expire leases early; ask for a TTL of at most %v, or use another bucket (buckets that dlock, leadelect and natslease create have no MaxAge and take any TTL)",
			ErrBucketMismatch, ErrTTLNotSupported, kv.Bucket(), p.maxAge, ttl, p.maxAge)
	}
	_, _, err = p.leaseTTL(kv.Bucket(), ttl)
	return err
}
