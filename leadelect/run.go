package leadelect

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/wait"
)

// Callbacks are told of the election's course. Each may be nil.
type Callbacks struct {
	// OnStartedLeading runs the leader's work for one term. It is called
	// on a new goroutine at the start of each term, with a context that is
	// cancelled the moment the term ends: leadership lost (at the latest
	// at the lease's safety deadline, before any other candidate can
	// lead), Resign, or the end of Run's context. It should return soon
	// after: the key is not released, and Run neither campaigns again nor
	// returns, until it has. If it returns earlier, the term goes on
	// until one of those ends it.
	OnStartedLeading func(ctx context.Context)
	// OnStoppedLeading is called once per term, on Run's goroutine, after
	// the term's context was cancelled, OnStartedLeading returned, and the
	// key was released (or kept, or lost). Run campaigns again, or
	// returns, when it returns.
	OnStoppedLeading func()
	// OnNewLeader is called with the leader's ID whenever a new term
	// begins, this candidate's own included, as the key's watch reports
	// it. Setting it (or Config.Metrics) gives the candidate a watch of
	// the key for as long as Run runs; a candidate with neither watches
	// only what it waits for. Calls come one at a time, in order, from a goroutine Run starts
	// for them and waits for before returning; their timing relative to
	// the other callbacks is not defined. A call that is slow makes the
	// ones after it coalesce as Observe's values do.
	OnNewLeader func(id string)
}

// termKey marks a leader context with its term.
type termKey struct{}

// TokenFromContext returns the fencing token of the term whose leader
// context (given to OnStartedLeading) ctx is or derives from. Pass it to
// the resources the leader writes, and have them refuse smaller ones.
func TokenFromContext(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(termKey{}).(*term)
	if !ok {
		return 0, false
	}
	return t.token, true
}

var errConnClosed = fmt.Errorf("leadelect: %w", nats.ErrConnectionClosed)

// Run campaigns until ctx ends: it waits for the key to be vacant (woken
// by the key's watch), acquires it, and leads until leadership is lost
// or resigned, then campaigns again. See Callbacks for what is called
// when, and on which goroutine.
//
// When ctx ends, a term in progress ends: its context is cancelled, Run
// waits for OnStartedLeading to return, releases the key (unless
// Config.KeepOnCancel) so that another candidate takes over within
// milliseconds, calls OnStoppedLeading, and returns ctx.Err(). When Run
// returns, none of its callbacks is running or will run.
//
// Run returns early with an error that retrying cannot cure: the
// bucket cannot be created or used (errors wrapping
// natskvlease.ErrBucketMismatch or ErrTTLNotSupported), JetStream is not
// enabled, the server is too old, or the connection was closed
// (nats.ErrConnectionClosed). Transient failures are retried. A second
// Run while one is in progress returns ErrRunning.
func (e *Election) Run(ctx context.Context, cb Callbacks) error {
	if err := e.begin(); err != nil {
		return err
	}
	defer e.finish()
	lease, err := e.openRetrying(ctx)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	var f *follower
	if cb.OnNewLeader != nil || e.cfg.Metrics != nil {
		// Someone listens for new leaders: follow the key all along. (A
		// candidate that only campaigns keeps no watch of its own: its
		// lease watches what it waits for, and a release reaches one
		// waiter, not every candidate.)
		f = e.newFollower(cancel)
		wg.Go(func() { f.run(runCtx) })
		wg.Go(func() { e.notifyLeaders(runCtx, f.out, cb.OnNewLeader) })
	}
	err = e.campaign(runCtx, lease, f, cb)
	cancel(nil)
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (e *Election) begin() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return ErrRunning
	}
	e.running = true
	return nil
}

func (e *Election) finish() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running = false
}

// openRetrying opens the bucket, retrying what may be transient.
func (e *Election) openRetrying(ctx context.Context) (*natskvlease.Lease, error) {
	delay := rewatchDelay
	for {
		lease, err := e.open(ctx)
		switch {
		case err == nil:
			return lease, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case permanent(err):
			return nil, err
		case e.js.Conn().IsClosed():
			return nil, errConnClosed
		}
		e.logger.Warn("leadelect: cannot open the election's bucket yet; retrying", "error", err, "in", delay)
		if !wait.Sleep(ctx, delay) {
			return nil, ctx.Err()
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// newFollower returns a follower of the election's key that cancels
// with errConnClosed when it finds the connection closed.
func (e *Election) newFollower(cancel context.CancelCauseFunc) *follower {
	f := newFollower(e.bucket.open, e.cfg.Key, e.js.Conn(), e.logger)
	f.self = e.nonce
	f.onClosed = func() { cancel(errConnClosed) }
	return f
}

// resignSettle is how long a resigned candidate with no follower running
// waits before it starts one: the next leader's acquisition is a round
// trip or two away, and creating a watch's consumer meanwhile competes
// with it on the server (it made the handoff's write three times slower
// on two CPUs). Its first entry is the key's latest state, so nothing
// that decides waitOther is missed.
const resignSettle = 10 * time.Millisecond

// waitOther waits, after a resignation, until another candidate has led
// or a TTL has passed. With no follower running, it follows the key for
// as long as it waits, from resignSettle on.
func (e *Election) waitOther(ctx context.Context, f *follower, token, released uint64) {
	start := time.Now()
	if f == nil {
		if !wait.Sleep(ctx, resignSettle) {
			return
		}
		wctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		f = e.newFollower(cancel)
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.run(wctx)
		}()
		defer func() { cancel(nil); <-done }()
		ctx = wctx
	}
	f.waitOther(ctx, token, released, e.cfg.TTL-time.Since(start))
}

// campaign alternates waiting for the key and leading, until ctx ends.
func (e *Election) campaign(ctx context.Context, lease *natskvlease.Lease, f *follower, cb Callbacks) error {
	for {
		if err := e.acquire(ctx, lease); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return err
		}
		token, resigned := e.lead(ctx, lease, cb)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if resigned {
			// Give the others a chance: campaign again once one of them
			// has led, or after a TTL if none does.
			e.waitOther(ctx, f, token, lease.Revision())
		}
	}
}

// acquire blocks until the lease is held or ctx ends. One AcquireWait
// waits all along: it keeps the candidate's place in the waiter queue,
// which a new AcquireWait would give up for a place at the back, and it
// watches anew whenever its watch ends or falls silent.
func (e *Election) acquire(ctx context.Context, lease *natskvlease.Lease) error {
	if !lease.IsHeld() {
		lease.UpdateValue(e.identity(time.Time{}, 0)) // a new term's first write
	}
	err := lease.AcquireWait(ctx)
	if err != nil && ctx.Err() != nil {
		// An acquisition cut short with its write in flight has already
		// purged that write (Lease.AcquireWait does).
		return ctx.Err()
	}
	return err // nil, or an error AcquireWait deems final
}

// lead runs one term, from a held lease to its end, and returns its
// token and whether it ended by Resign.
func (e *Election) lead(ctx context.Context, lease *natskvlease.Lease, cb Callbacks) (token uint64, resigned bool) {
	t := e.beginTerm(ctx, lease)
	if t == nil {
		return 0, false // lost between acquiring and starting
	}
	work := t.startWork(cb.OnStartedLeading)
	// The lease renews itself until released; a loss ends t.ctx.
	if err := lease.KeepAlive(context.Background()); err != nil {
		t.cancel() // lost between acquiring and now
	}
	<-t.ctx.Done()
	// Keep the key while the leader's work winds down, so that no one
	// else starts leading before it has stopped. A lease lost meanwhile
	// cannot be kept; the work is still waited for.
	<-work
	t.unhookLoss()
	resigned = t.decide()
	if resigned || ctx.Err() == nil || !e.cfg.KeepOnCancel {
		t.setErr(e.release(lease))
	} else {
		lease.StopKeepAlive() // kept: it lapses after its TTL unless resumed
	}
	e.endTerm(t)
	if cb.OnStoppedLeading != nil {
		cb.OnStoppedLeading()
	}
	return t.token, resigned
}

// beginTerm records the new term and rewrites the stored identity with
// its token and start, carried by every renewal. Nil if the lease was
// lost already.
func (e *Election) beginTerm(ctx context.Context, lease *natskvlease.Lease) *term {
	tok := lease.Token()
	if tok == 0 {
		return nil
	}
	e.mu.Lock()
	if e.sinceTerm != tok { // not a term resumed by a new Run
		e.since, e.sinceTerm = time.Now(), tok
	}
	since := e.since
	t := newTerm(ctx, lease, tok)
	e.term = t
	e.mu.Unlock()
	lease.UpdateValue(e.identity(since, tok))
	e.logger.Info("leadelect: started leading", "token", tok)
	return t
}

func (e *Election) endTerm(t *term) {
	e.mu.Lock()
	e.term = nil
	e.mu.Unlock()
	close(t.ended)
	e.record(natskvlease.Event{Kind: natskvlease.EventTermEnded, Duration: time.Since(t.began), Token: t.token})
	e.logger.Info("leadelect: stopped leading", "token", t.token)
}

// release gives the key up with a revision-checked purge, waiting at
// most a TTL. A lease already lost is not an error; a revision of ours
// still on the server is deleted all the same, to hasten the handoff.
func (e *Election) release(lease *natskvlease.Lease) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.TTL)
	defer cancel()
	err := lease.Release(ctx)
	if err == nil || errors.Is(err, natskvlease.ErrLeaseNotHeld) {
		return nil
	}
	e.logger.Warn("leadelect: release failed; the key expires after its TTL", "error", err)
	return err
}

// notifyLeaders reports each new leader to fn and to the metrics.
func (e *Election) notifyLeaders(ctx context.Context, in <-chan LeaderInfo, fn func(id string)) {
	for info := range in { // closed when ctx ends
		if info.Vacant() || ctx.Err() != nil {
			continue
		}
		e.record(natskvlease.Event{Kind: natskvlease.EventLeaderChanged, Leader: info.ID})
		if fn != nil {
			fn(info.ID)
		}
	}
}

// record reports an election event to the configured metrics, if any.
func (e *Election) record(ev natskvlease.Event) {
	if e.cfg.Metrics != nil {
		ev.Key = e.cfg.Key
		e.cfg.Metrics.Record(ev)
	}
}
