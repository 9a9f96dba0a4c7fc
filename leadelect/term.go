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
	began  time.Time
	ctx    context.Context // the leader context, marked with the term
	cancel context.CancelFunc
	ended  chan struct{} // closed once the term is over and no longer current
	// unhookLoss stops cancelling ctx on the end of the lease's holding.
	unhookLoss func() bool

	mu       sync.Mutex
	resigned bool
	decided  bool // how the term ends is settled; Resign is too late
	err      error
}

func newTerm(ctx context.Context, lease *natskvlease.Lease, token uint64) *term {
	t := &term{lease: lease, token: token, began: time.Now(), ended: make(chan struct{})}
	ctx, t.cancel = context.WithCancel(ctx)
	t.ctx = context.WithValue(ctx, termKey{}, t)
	// The leader context ends the moment the holding does, even while a
	// renewal hangs: the lease ends it at its safety deadline at the
	// latest. The callback costs no goroutine until then.
	t.unhookLoss = context.AfterFunc(lease.Context(), t.cancel)
	return t
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
