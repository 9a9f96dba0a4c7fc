package leadelect

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/natskvlease/natskvlease"
)

// errTermEnding: Resign came after the term had decided how to end.
var errTermEnding = errors.New("leadelect: term already ending")

// term is one holding of leadership, from acquiring the key to
// releasing (or losing, or keeping) it.
type term struct {
	lease  *natskvlease.Lease
	token  uint64
	ctx    context.Context // the leader context, marked with the term
	cancel context.CancelFunc
	ended  chan struct{} // closed once the term is over and no longer current

	mu       sync.Mutex
	resigned bool
	decided  bool // how the term ends is settled; Resign is too late
	err      error
}

func newTerm(ctx context.Context, lease *natskvlease.Lease, token uint64) *term {
	t := &term{lease: lease, token: token, ended: make(chan struct{})}
	ctx, t.cancel = context.WithCancel(ctx)
	t.ctx = context.WithValue(ctx, termKey{}, t)
	go t.cancelOnLoss(lease.Done())
	return t
}

// cancelOnLoss cancels the leader context the moment the holding ends,
// even while a renewal is blocked in a request. It returns when the
// context is cancelled, which lead always does.
func (t *term) cancelOnLoss(lost <-chan struct{}) {
	select {
	case <-lost:
		t.cancel()
	case <-t.ctx.Done():
	}
}

// startWork runs fn(t.ctx) on a new goroutine; the channel returned is
// closed when it returns.
func (t *term) startWork(fn func(context.Context)) <-chan struct{} {
	done := make(chan struct{})
	if fn == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		fn(t.ctx)
	}()
	return done
}

// resign ends the term and waits for its release (see Election.Resign).
func (t *term) resign(ctx context.Context) error {
	t.mu.Lock()
	late := t.decided
	t.resigned = true
	t.mu.Unlock()
	if late {
		return errTermEnding
	}
	t.cancel()
	if ctx.Value(termKey{}) == t {
		return nil // from the leader's work, which the release waits for
	}
	select {
	case <-t.ended:
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// decide settles how the term ends and reports whether it was resigned.
func (t *term) decide() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.decided = true
	return t.resigned
}

func (t *term) setErr(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.err = err
}

// renewer renews a held lease every TTL*RenewRatio.
type renewer struct {
	lease *natskvlease.Lease
	every time.Duration
	timer *time.Timer
	e     *Election
}

func newRenewer(lease *natskvlease.Lease, ratio float64, e *Election) *renewer {
	every := time.Duration(float64(lease.TTL()) * ratio)
	return &renewer{lease: lease, every: every, timer: time.NewTimer(every), e: e}
}

// keep renews on schedule until stop is closed (true) or the lease is
// lost (false). Renewals are never cancelled from outside (each is
// bounded by the lease's safety deadline): a renewal whose answer was cut
// off would leave the lease a revision behind the server, and the
// release that follows would miss the key.
func (r *renewer) keep(stop <-chan struct{}) bool {
	for {
		select {
		case <-stop:
			return true
		case <-r.lease.Done():
			return false
		case <-r.timer.C:
			if ok, err := r.lease.Renew(context.Background()); !ok {
				r.e.logger.Warn("leadelect: leadership lost", "error", err)
			}
			r.timer.Reset(r.every)
		}
	}
}
