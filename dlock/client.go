package dlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/turnstile"
)

// Client takes locks in one bucket. It is safe for concurrent use. Close
// it to release the locks it holds.
type Client struct {
	kv       jetstream.KeyValue
	ops      *natskvlease.KVOps
	ttl      time.Duration
	logger   *slog.Logger
	metrics  natskvlease.Metrics
	hostname string
	pid      int

	life     context.Context // cancelled by Close: aborts calls in flight
	end      context.CancelFunc
	inflight sync.WaitGroup // calls between begin and their end
	turns    turnstile.Set  // Lock calls wait on the server one per key: see Lock

	mu     sync.Mutex // guards the fields below
	closed bool
	locks  map[*Lock]struct{}    // held locks, released by Close
	idle   map[string]*leaseSlot // leases of keys unlocked cleanly, for their next Lock
}

// New checks that the server behind js runs NATS 2.11 or newer with
// JetStream enabled, opens the lock bucket and returns a Client. The
// bucket is opened by natskvlease.KVHelper.OpenLeaseBucket, the rule
// dlock, leadelect and natslease share: an existing bucket is used if it
// can enforce the lock TTL (expiry markers, and a MaxAge, if any, at
// least the TTL); a missing one is created without MaxAge, so that
// clients with different TTLs share it. A nil js or an invalid option
// gives an error wrapping natskvlease.ErrInvalidConfig; a bucket that
// cannot enforce the TTL one wrapping natskvlease.ErrBucketMismatch; a
// user the server does not allow one wrapping
// natskvlease.ErrPermissionDenied.
func New(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt != nil {
			opt(&cfg)
		}
	}
	if js == nil {
		return nil, &natskvlease.ConfigError{Package: "dlock", Field: "New js", Reason: "is nil"}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := cfg.logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("bucket", cfg.bucket)
	kv, err := openBucket(ctx, js, cfg, logger)
	if err != nil {
		return nil, err
	}
	c := &Client{
		kv:      kv,
		ops:     natskvlease.NewKVOps(kv, logger),
		ttl:     cfg.ttl,
		logger:  logger,
		metrics: cfg.metrics,
		pid:     os.Getpid(),
		locks:   make(map[*Lock]struct{}),
	}
	c.hostname, _ = os.Hostname() // best effort; it is for operators
	c.life, c.end = context.WithCancel(context.Background())
	return c, nil
}

func openBucket(ctx context.Context, js jetstream.JetStream, cfg config, logger *slog.Logger) (jetstream.KeyValue, error) {
	if err := natskvlease.ValidateNatsVersion(js.Conn()); err != nil {
		return nil, fmt.Errorf("dlock: %w", err)
	}
	if err := natskvlease.ValidateJetStreamEnabled(ctx, js, logger); err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			err = inner // JetStream's own error, without natskvlease's prefix
		}
		return nil, fmt.Errorf("dlock: JetStream not available: %w", err)
	}
	kv, err := natskvlease.NewKVHelper(js, logger).OpenLeaseBucket(ctx, cfg.bucketConfig())
	if err != nil {
		return nil, fmt.Errorf("dlock: bucket %q: %w", cfg.bucket, err)
	}
	return kv, nil
}

// TTL returns the lock TTL.
func (c *Client) TTL() time.Duration { return c.ttl }

// Close releases every lock the client holds (each with one
// revision-checked purge, so waiters get them at once), aborts Lock
// calls still waiting, and makes every later call return an error
// wrapping natskvlease.ErrProviderClosed. It returns the errors of
// releases that could not be confirmed (those locks expire after the
// TTL). A second Close returns nil.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.end()
	c.inflight.Wait() // calls in flight end promptly: their context is done
	var errs []error
	for _, l := range c.held() {
		// A lock unlocked meanwhile by its owner answers ErrLeaseNotHeld.
		if err := l.Unlock(ctx); err != nil && !errors.Is(err, ErrLockLost) && !errors.Is(err, natskvlease.ErrLeaseNotHeld) {
			c.logger.WarnContext(ctx, "dlock: release on Close", "key", l.key, "error", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Client) held() []*Lock {
	c.mu.Lock()
	defer c.mu.Unlock()
	locks := make([]*Lock, 0, len(c.locks))
	for l := range c.locks {
		locks = append(locks, l)
	}
	return locks
}

// begin admits a call unless the client is closed, and returns ctx
// cancelled also by Close. end must be called when the call returns.
func (c *Client) begin(ctx context.Context) (_ context.Context, end func(), _ error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, natskvlease.ErrProviderClosed
	}
	c.inflight.Add(1)
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.life, cancel)
	return ctx, func() { stop(); cancel(); c.inflight.Done() }, nil
}

// fail wraps the error of a call; one cut short by Close wraps
// ErrProviderClosed instead.
func (c *Client) fail(op, key string, err error) error {
	if c.life.Err() != nil {
		return fmt.Errorf("dlock: %s %q: %w", op, key, natskvlease.ErrProviderClosed)
	}
	return fmt.Errorf("dlock: %s %q: %w", op, key, err)
}

// register records a new lock for Close; it fails once Close has begun.
func (c *Client) register(l *Lock) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return natskvlease.ErrProviderClosed
	}
	c.locks[l] = struct{}{}
	return nil
}

func (c *Client) forget(l *Lock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.locks, l)
}
