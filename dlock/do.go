package dlock

import (
	"context"
	"fmt"

	"github.com/natskvlease/natskvlease"
)

// Do locks key (waiting as Lock does), runs fn with the fencing token and
// a context that ends when the lock is lost or ctx ends, then unlocks,
// also when fn panics.
//
// It returns fn's error. If the lock was lost while fn ran, the error
// wraps ErrLockLost (and fn's error, if any), even when fn returned nil:
// the work may have overlapped another holder's, so it must not count as
// done under the lock. An error releasing the lock after fn is logged,
// not returned: the key then expires after its TTL. A nil fn gives an
// error wrapping natskvlease.ErrInvalidConfig.
func (c *Client) Do(ctx context.Context, key string, fn func(ctx context.Context, token uint64) error) (err error) {
	if fn == nil {
		return &natskvlease.ConfigError{Package: "dlock", Field: "Do fn", Reason: "is nil"}
	}
	l, err := c.Lock(ctx, key)
	if err != nil {
		return err
	}
	defer func() { err = l.finishDo(ctx, err) }()
	return l.call(ctx, fn)
}

// call runs fn with a context that ends with ctx or with the lock.
func (l *Lock) call(ctx context.Context, fn func(context.Context, uint64) error) error {
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(l.ctx, func() { cancel(context.Cause(l.ctx)) })
	defer stop()
	return fn(runCtx, l.token)
}

// finishDo unlocks after fn and decides Do's error.
func (l *Lock) finishDo(ctx context.Context, fnErr error) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.client.ttl)
	defer cancel()
	uerr := l.Unlock(uctx)
	select {
	case <-l.lost:
		if fnErr == nil {
			return fmt.Errorf("dlock: do %q: %w while fn ran", l.key, ErrLockLost)
		}
		return fmt.Errorf("dlock: do %q: %w while fn ran: %w", l.key, ErrLockLost, fnErr)
	default:
	}
	if uerr != nil {
		l.logger.WarnContext(ctx, "dlock: unlock after Do", "error", uerr)
	}
	return fnErr
}
