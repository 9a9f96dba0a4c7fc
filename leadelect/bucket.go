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
	// The rule dlock and natslease share: an existing bucket is used if
	// it can enforce spec.ttl with expiry markers; a missing one is
	// created (candidates) without MaxAge, for any TTL.
	kv, err := natskvlease.NewKVHelper(js, logger).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{
		Bucket:      spec.name,
		TTL:         spec.ttl,
		FileStorage: spec.fileStorage,
		Replicas:    spec.replicas,
		NoCreate:    !spec.create,
	})
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound) && !spec.create:
		return nil, errBucketMissing
	case errors.Is(err, natskvlease.ErrBucketMismatch), errors.Is(err, natskvlease.ErrTTLNotSupported):
		return nil, fmt.Errorf("leadelect: %w", err)
	case err != nil:
		return nil, fmt.Errorf("leadelect: opening bucket %q: %w", spec.name, err)
	}
	return kv, nil
}

// permanent reports errors that retrying cannot cure.
func permanent(err error) bool { return natskvlease.IsFinal(err) }
