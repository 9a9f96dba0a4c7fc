package leadelect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// errBucketMissing: the bucket does not exist and this caller does not
// create buckets (an Observer).
var errBucketMissing = errors.New("leadelect: bucket does not exist yet")

// bucketSpec says how to open, and perhaps create, an election's bucket.
type bucketSpec struct {
	name   string
	create bool // create it if missing (candidates); observers wait
	// For creation and checks; zero for observers.
	ttl         time.Duration
	fileStorage bool
	replicas    int
}

// openBucket checks that JetStream answers and the server is recent
// enough, then opens the bucket (creating it when spec.create allows)
// and checks that it can hold leases of spec.ttl with expiry markers.
// Transient failures are retried briefly; the result is bound to js.
func openBucket(ctx context.Context, js jetstream.JetStream, spec bucketSpec, logger *slog.Logger) (jetstream.KeyValue, error) {
	_, err := natskvlease.Retry(ctx, func() (struct{}, error) {
		return struct{}{}, natskvlease.ValidateJetStreamEnabled(ctx, js, nil)
	})
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = inner // JetStream's own error, without natskvlease's prefix
		}
		return nil, fmt.Errorf("leadelect: JetStream not available: %w", err)
	}
	if err := natskvlease.ValidateNatsVersion(js.Conn()); err != nil {
		return nil, fmt.Errorf("leadelect: %w", err)
	}
	kv, err := natskvlease.Retry(ctx, func() (jetstream.KeyValue, error) { return js.KeyValue(ctx, spec.name) })
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound) && !spec.create:
		return nil, errBucketMissing
	case errors.Is(err, jetstream.ErrBucketNotFound):
		kv, err = createBucket(ctx, js, spec, logger)
	}
	if err != nil {
		return nil, fmt.Errorf("leadelect: opening bucket %q: %w", spec.name, err)
	}
	if err := checkBucket(ctx, kv); err != nil {
		return nil, err
	}
	return natskvlease.BindJetStream(kv, js), nil
}

func createBucket(ctx context.Context, js jetstream.JetStream, spec bucketSpec, logger *slog.Logger) (jetstream.KeyValue, error) {
	kv, err := natskvlease.NewKVHelper(js, logger).GetOrCreateBucket(ctx, natskvlease.BucketConfig{
		Bucket:      spec.name,
		TTL:         spec.ttl,
		FileStorage: spec.fileStorage,
		Replicas:    spec.replicas,
	})
	if errors.Is(err, natskvlease.ErrBucketMismatch) {
		// Created meanwhile by a candidate with another TTL; checkBucket
		// decides whether ours fits.
		return natskvlease.Retry(ctx, func() (jetstream.KeyValue, error) { return js.KeyValue(ctx, spec.name) })
	}
	return kv, err
}

// checkBucket refuses a bucket without expiry markers: a dead leader's
// expiry would be silent, and no candidate would be woken. Whether it
// can enforce a candidate's TTL is the lease's own rule (Lease.Check).
func checkBucket(ctx context.Context, kv jetstream.KeyValue) error {
	st, err := natskvlease.Retry(ctx, func() (jetstream.KeyValueStatus, error) { return kv.Status(ctx) })
	if err != nil {
		return fmt.Errorf("leadelect: reading bucket %q: %w", kv.Bucket(), err)
	}
	if st.LimitMarkerTTL() <= 0 {
		return fmt.Errorf("%w: bucket %q has no LimitMarkerTTL, so expiries leave no marker to wake candidates; create it with natskvlease.KVHelper or let leadelect create it",
			natskvlease.ErrBucketMismatch, kv.Bucket())
	}
	return nil
}

// permanent reports errors that retrying cannot cure.
func permanent(err error) bool { return natskvlease.IsFinal(err) }
