package dlock

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

const (
	// DefaultBucket is the bucket used when WithBucket is not given.
	DefaultBucket = "dlock"
	// DefaultTTL is the lock TTL used when WithTTL is not given.
	DefaultTTL = 10 * time.Second
	// MinTTL is the shortest TTL accepted: the server counts key TTLs
	// in whole seconds.
	MinTTL = time.Second
)

// Option configures a Client.
type Option func(*config)

type config struct {
	bucket   string
	ttl      time.Duration
	storage  jetstream.StorageType
	replicas int
	logger   *slog.Logger
	metrics  natskvlease.Metrics
}

func defaultConfig() config {
	return config{bucket: DefaultBucket, ttl: DefaultTTL, storage: jetstream.MemoryStorage}
}

// WithBucket names the KeyValue bucket holding the locks (default
// DefaultBucket). It is created if missing. Every client sharing locks
// must use the same bucket; each may use its own TTL.
func WithBucket(name string) Option { return func(c *config) { c.bucket = name } }

// WithTTL sets how long a lock survives its holder: a holder that stops
// renewing (crash, partition) loses the lock and the key expires on the
// server after ttl (each write carries it as a per-message TTL). At least
// MinTTL; default DefaultTTL. Locks are renewed every ttl/3.
func WithTTL(ttl time.Duration) Option { return func(c *config) { c.ttl = ttl } }

// WithStorage chooses the bucket's storage for a new bucket: memory (the
// default) or file.
func WithStorage(st jetstream.StorageType) Option { return func(c *config) { c.storage = st } }

// WithFileStorage is WithStorage(jetstream.FileStorage): locks survive a
// server restart.
func WithFileStorage() Option { return WithStorage(jetstream.FileStorage) }

// WithReplicas sets the bucket's number of replicas for a new bucket (1
// to 5; default 1).
func WithReplicas(n int) Option { return func(c *config) { c.replicas = n } }

// WithLogger sets the logger (default: logs are discarded).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithMetrics reports every lock's lease events to m (see
// natskvlease.Metrics; default: none).
func WithMetrics(m natskvlease.Metrics) Option { return func(c *config) { c.metrics = m } }

func (c config) validate() error {
	switch {
	case c.ttl < MinTTL:
		return &natskvlease.ConfigError{Package: "dlock", Field: "WithTTL", Reason: c.ttl.String() + " is below the 1s minimum"}
	case c.storage != jetstream.MemoryStorage && c.storage != jetstream.FileStorage:
		return &natskvlease.ConfigError{Package: "dlock", Field: "WithStorage", Reason: "unknown storage type " + c.storage.String()}
	case c.replicas < 0 || c.replicas > 5:
		return &natskvlease.ConfigError{Package: "dlock", Field: "WithReplicas", Reason: fmt.Sprintf("%d is outside 1..5", c.replicas)}
	}
	return ourField("WithBucket", natskvlease.ValidateBucket(c.bucket))
}

// checkKey refuses a key the server would not take, as a dlock error.
func checkKey(key string) error {
	return ourField("key", natskvlease.ValidateKey(key))
}

// ourField restates a natskvlease validation error as dlock's own, so
// that the message has one prefix: "dlock: invalid key: is empty".
func ourField(field string, err error) error {
	var ce *natskvlease.ConfigError
	if errors.As(err, &ce) {
		return &natskvlease.ConfigError{Package: "dlock", Field: field, Reason: ce.Reason}
	}
	return err
}

func (c config) bucketConfig() natskvlease.LeaseBucketConfig {
	return natskvlease.LeaseBucketConfig{
		Bucket:      c.bucket,
		TTL:         c.ttl,
		FileStorage: c.storage == jetstream.FileStorage,
		Replicas:    c.replicas,
	}
}
