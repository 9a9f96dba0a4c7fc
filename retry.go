package natskvlease

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natskvlease/natskvlease/internal/wait"
)

const (
	// DefaultMaxRetries is the default number of attempts (the first
	// included) that Retry makes.
	DefaultMaxRetries = 5
	// DefaultMaxElapsedTime is the default time after which Retry stops
	// retrying.
	DefaultMaxElapsedTime = 2 * time.Second

	defaultInitialInterval = 25 * time.Millisecond
	defaultMaxInterval     = 500 * time.Millisecond
)

// RetryConfig bounds Retry. Zero fields take the defaults, so the zero
// value is usable.
type RetryConfig struct {
	// MaxRetries is the total number of attempts, the first included.
	// Zero means DefaultMaxRetries.
	MaxRetries uint
	// MaxElapsedTime stops retrying once this much time has passed since
	// the first attempt. Zero means DefaultMaxElapsedTime.
	MaxElapsedTime time.Duration
	// InitialInterval is the first wait between attempts; later waits
	// grow exponentially with jitter. Zero means 25ms.
	InitialInterval time.Duration
	// MaxInterval caps a single wait. Zero means 500ms.
	MaxInterval time.Duration
}

// DefaultRetryConfig returns the configuration Retry uses.
func DefaultRetryConfig() RetryConfig {
	return RetryConfig{
		MaxRetries:      DefaultMaxRetries,
		MaxElapsedTime:  DefaultMaxElapsedTime,
		InitialInterval: defaultInitialInterval,
		MaxInterval:     defaultMaxInterval,
	}
}

func (c RetryConfig) withDefaults() RetryConfig {
	d := DefaultRetryConfig()
	if c.MaxRetries == 0 {
		c.MaxRetries = d.MaxRetries
	}
	if c.MaxElapsedTime <= 0 {
		c.MaxElapsedTime = d.MaxElapsedTime
	}
	if c.InitialInterval <= 0 {
		c.InitialInterval = d.InitialInterval
	}
	if c.MaxInterval <= 0 {
		c.MaxInterval = d.MaxInterval
	}
	return c
}

// Retry calls fn until it succeeds, returns an error that is not
// transient, or the default limits (DefaultRetryConfig) are reached.
//
// Transient errors are timeouts, "no responders", a connection that is
// disconnected or reconnecting, a refused connection and JetStream
// answering that it is temporarily unavailable. Any other error is
// returned at once, unchanged. When the limits are reached the last error
// is returned; when ctx ends first, ctx.Err() joined with the last error.
// Retry never sleeps past ctx's deadline.
//
// fn must be safe to repeat: a write that timed out may have been applied.
func Retry[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	return RetryWithConfig(ctx, fn, DefaultRetryConfig())
}

// RetryWithConfig is Retry with explicit limits.
func RetryWithConfig[T any](ctx context.Context, fn func() (T, error), cfg RetryConfig) (T, error) {
	cfg = cfg.withDefaults()
	b := newBackoff(cfg)
	var zero T
	var last error
	for attempt := uint(1); ; attempt++ {
		if err := ctx.Err(); err != nil {
			return zero, joinLast(err, last)
		}
		v, err := fn()
		if err == nil {
			return v, nil
		}
		last = err
		if !IsTransient(err) || attempt >= cfg.MaxRetries {
			return zero, err
		}
		d := b.NextBackOff()
		if d == backoff.Stop || !wait.Sleep(ctx, d) {
			if ctx.Err() != nil {
				return zero, joinLast(ctx.Err(), err)
			}
			return zero, err
		}
	}
}

// joinLast is ctxErr, joined with the last error of the attempts made
// before the context ended, if any.
func joinLast(ctxErr, last error) error {
	if last == nil {
		return ctxErr
	}
	return errors.Join(ctxErr, last)
}

func newBackoff(cfg RetryConfig) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(cfg.InitialInterval),
		backoff.WithMaxInterval(cfg.MaxInterval),
		backoff.WithMaxElapsedTime(cfg.MaxElapsedTime),
	)
}

// IsTransient reports whether err is worth retrying: the operation may
// succeed if repeated after a short wait. Such errors leave a write's
// outcome unknown; callers must resolve it before concluding.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrNoServers),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET):
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr != nil {
		return isTransientAPIError(apiErr)
	}
	return false
}

// IsFinal reports whether err is one that waiting and retrying cannot
// cure, so a caller that waits for a lease (AcquireWait, dlock's Lock,
// LeaseManager, leadelect's Run) returns it instead of trying again: an
// invalid configuration, a TTL or bucket the lease cannot use, a server
// too old or without JetStream, a connection closed for good.
func IsFinal(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrInvalidConfig),
		errors.Is(err, ErrTTLNotSupported),
		errors.Is(err, ErrBucketMismatch),
		errors.Is(err, ErrPermissionDenied),
		errors.Is(err, ErrTopologyNotSupported),
		errors.Is(err, ErrNatsVersionNotSupported),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled),
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return true
	}
	return false
}

// isTransientAPIError: JetStream answers 503 while a stream or the meta
// layer has no leader; only "not enabled" is a lasting 503.
func isTransientAPIError(e *jetstream.APIError) bool {
	switch e.ErrorCode {
	case jetstream.JSErrCodeJetStreamNotEnabled, jetstream.JSErrCodeJetStreamNotEnabledForAccount:
		return false
	}
	return e.Code == 503
}

// isRevisionMismatch reports a failed revision check (10071 on single
// replica streams, 10164 on replicated ones).
func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr != nil &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// lazyBackoff is a backoff built at its first pause, so that an
// operation that succeeds at once pays nothing for it.
type lazyBackoff struct {
	cfg RetryConfig
	b   *backoff.ExponentialBackOff
}

// pause waits for the next backoff interval; false means stop trying.
func (lb *lazyBackoff) pause(ctx context.Context) bool {
	if lb.b == nil {
		lb.b = newBackoff(lb.cfg)
	}
	d := lb.b.NextBackOff()
	return d != backoff.Stop && wait.Sleep(ctx, d)
}
