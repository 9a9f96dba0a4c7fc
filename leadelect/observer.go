package leadelect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// Observer follows an election without taking part: it never writes,
// and never creates the bucket. It is safe for concurrent use.
type Observer struct {
	cfg    ObserverConfig
	js     jetstream.JetStream
	bucket *bucketOpener
}

// NewObserver returns an Observer of the election cfg names. It does no
// I/O; the bucket is opened on first use. Errors wrap
// natskvlease.ErrInvalidConfig and name the field.
func NewObserver(js jetstream.JetStream, cfg ObserverConfig) (*Observer, error) {
	if js == nil {
		return nil, &natskvlease.ConfigError{Package: "leadelect", Field: "jetstream.JetStream", Reason: "is nil"}
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	spec := bucketSpec{name: cfg.Bucket}
	return &Observer{cfg: cfg, js: js, bucket: newBucketOpener(js, spec, cfg.Logger)}, nil
}

// Observe reports every change of leadership: see Election.Observe. If
// the bucket does not exist yet, the first value is a vacancy and the
// Observer looks for the bucket every second.
func (o *Observer) Observe(ctx context.Context) <-chan LeaderInfo {
	return observe(ctx, o.bucket.open, o.cfg.Key, o.js, o.cfg.Logger)
}

// Leader returns the current leader: see Election.Leader. A bucket that
// does not exist yet gives ErrNoLeader.
func (o *Observer) Leader(ctx context.Context) (LeaderInfo, error) {
	return leader(ctx, o.bucket.open, o.cfg.Key)
}

func observe(ctx context.Context, open func(context.Context) (jetstream.KeyValue, error), key string, js jetstream.JetStream, logger *slog.Logger) <-chan LeaderInfo {
	f := newFollower(open, key, js.Conn(), logger)
	go f.run(ctx)
	return f.out
}

func leader(ctx context.Context, open func(context.Context) (jetstream.KeyValue, error), key string) (LeaderInfo, error) {
	kv, err := open(ctx)
	if errors.Is(err, errBucketMissing) {
		return LeaderInfo{}, ErrNoLeader
	}
	if err != nil {
		return LeaderInfo{}, err
	}
	e, err := natskvlease.Retry(ctx, func() (jetstream.KeyValueEntry, error) { return kv.Get(ctx, key) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return LeaderInfo{}, ErrNoLeader
	}
	if err != nil {
		return LeaderInfo{}, fmt.Errorf("leadelect: reading %q: %w", key, err)
	}
	info, err := infoOf(e)
	if err != nil {
		return LeaderInfo{}, fmt.Errorf("%w (key %q, revision %d)", err, key, e.Revision()) // err has the prefix
	}
	if info.Vacant() {
		return info, ErrNoLeader
	}
	return info, nil
}

// bucketOpener opens a bucket once, on first use, and remembers it.
// Failures are not remembered: the next call tries again.
type bucketOpener struct {
	js     jetstream.JetStream
	spec   bucketSpec
	logger *slog.Logger
	sem    chan struct{} // a lock that a caller's ctx can abandon
	kv     jetstream.KeyValue
}

func newBucketOpener(js jetstream.JetStream, spec bucketSpec, logger *slog.Logger) *bucketOpener {
	return &bucketOpener{js: js, spec: spec, logger: logger, sem: make(chan struct{}, 1)}
}

func (b *bucketOpener) open(ctx context.Context) (jetstream.KeyValue, error) {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-b.sem }()
	if b.kv != nil {
		return b.kv, nil
	}
	kv, err := openBucket(ctx, b.js, b.spec, b.logger)
	if err != nil {
		return nil, err
	}
	b.kv = kv
	return kv, nil
}
