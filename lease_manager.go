package natskvlease

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrAlreadyStarted is returned by LeaseManager.Start on a running
// manager.
var ErrAlreadyStarted = errors.New("natskvlease: already started")

// LeaseManager campaigns for a lease continuously: it acquires the lease
// whenever it is free, renews it while held, and tries again after a
// loss, until stopped.
//
// It watches the key, so a delete, purge or expiry marker written by the
// server or by another holder's Release starts an acquisition at once,
// with one write on the marker's revision: a graceful handoff takes
// milliseconds, not a poll interval. Should the watch fall silent (it can
// stall after a server restart), it polls, with jitter, half a TTL after
// the watch last showed the key's holder.
//
// Managers of one key on one bound KeyValue (see BindJetStream) in one
// process take turns: one waits on the server, the others wait in the
// process, first come first served, so a crowd of them costs the server
// one watch and one write per handoff.
//
// Callbacks in the LeaseConfig run as described for LeaseCallbacks.
type LeaseManager struct {
	lease *Lease

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewLeaseManager returns a manager for the lease cfg describes in kv.
// An invalid configuration is reported by Start.
func NewLeaseManager(kv jetstream.KeyValue, cfg LeaseConfig) *LeaseManager {
	return &LeaseManager{lease: NewLease(kv, cfg)}
}

// Start begins campaigning in a new goroutine and returns at once. The
// campaign ends, releasing the lease, when ctx ends or Stop is called.
// Start reports a configuration error, or a TTL the bucket cannot honour,
// before campaigning; server outages are not errors here, the campaign
// retries until it reaches the server. Start after Stop returns
// ErrProviderStopped; a second Start returns ErrAlreadyStarted.
func (m *LeaseManager) Start(ctx context.Context) error {
	l := m.lease
	if l.cfgErr != nil {
		return l.cfgErr
	}
	m.mu.Lock()
	stopped, started := m.stopped, m.started
	m.mu.Unlock()
	if stopped {
		return ErrProviderStopped
	}
	if started {
		return ErrAlreadyStarted
	}
	if err := m.checkTTL(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.stopped:
		return ErrProviderStopped
	case m.started:
		return ErrAlreadyStarted
	}
	loopCtx, cancel := context.WithCancel(ctx)
	m.started, m.cancel, m.done = true, cancel, make(chan struct{})
	go m.run(loopCtx)
	return nil
}

// checkTTL learns the bucket's TTL policy now, so that a TTL it cannot
// honour is an error from Start rather than a campaign that never wins.
func (m *LeaseManager) checkTTL(ctx context.Context) error {
	l := m.lease
	l.opMu.Lock()
	defer l.opMu.Unlock()
	err := l.prepare(ctx)
	if err != nil && (errors.Is(err, ErrTTLNotSupported) || errors.Is(err, ErrInvalidConfig)) {
		return err
	}
	if err != nil {
		l.logger.Warn("natskvlease: bucket not reachable yet; campaigning anyway", "error", err)
	}
	return nil
}

// Stop ends the campaign, releases the lease if held, and waits for the
// campaign goroutine to end or ctx to end, whichever comes first. A second
// Stop returns ErrProviderStopped. The key's watch outlives Stop briefly:
// it is ended once it shows a successor's write, or half a second after
// the release, so that deleting its consumer does not slow the handoff.
func (m *LeaseManager) Stop(ctx context.Context) error {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrProviderStopped
	}
	m.stopped = true
	cancel, done := m.cancel, m.done
	m.mu.Unlock()
	if cancel == nil {
		return nil // never started
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IsHeld reports whether the lease is held now (see Lease.IsHeld).
func (m *LeaseManager) IsHeld() bool { return m.lease.IsHeld() }

// Token returns the fencing token of the current holding, 0 if not held.
func (m *LeaseManager) Token() uint64 { return m.lease.Token() }

// Deadline returns the safety deadline of the current holding, zero if
// not held.
func (m *LeaseManager) Deadline() time.Time { return m.lease.Deadline() }

// Done returns a channel closed when the current holding ends (closed
// already when not held).
func (m *LeaseManager) Done() <-chan struct{} { return m.lease.Done() }

// handoffWatchLinger bounds how long a stopped manager's watch waits for
// a successor before it is deleted anyway.
const handoffWatchLinger = 500 * time.Millisecond

// run is the campaign: one goroutine that owns every operation on the
// lease, driven by the key's watch and a timer.
func (m *LeaseManager) run(ctx context.Context) {
	defer close(m.done)
	l := m.lease
	var watcher *keyWatch
	defer func() {
		l.releaseAfterCancel()
		// The watch ends once a successor shows up on it (see keyWatch);
		// Stop need not wait for that.
		if watcher != nil {
			go watcher.stopAfterHandoff(l, handoffWatchLinger)
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	turns := turnsOf(l.ops.kv)
	var pass func() // set while this manager has its key's turn to wait
	defer func() {
		if pass != nil {
			pass()
		}
	}()
	for {
		held := l.IsHeld()
		switch {
		case held && pass != nil:
			pass() // the next manager in the process watches while we hold
			pass = nil
		case !held && pass == nil && turns != nil:
			// Managers of one key on one KeyValue wait on the server one
			// at a time; while another has the turn, this one neither
			// watches nor polls.
			if watcher != nil {
				go watcher.stop()
				watcher = nil
			}
			p, err := turns.Wait(ctx, l.cfg.Key)
			if err != nil {
				return
			}
			pass = p
			timer.Reset(0)
		}
		var lost <-chan struct{}
		if held {
			lost = l.Done()
		}
		select {
		case <-ctx.Done():
			return
		case e, ok := <-watcher.updates():
			if !ok {
				watcher.stop()
				watcher = nil // re-created at the next tick
				continue
			}
			if e == nil {
				continue // the end of the initial values
			}
			if next, act := m.onEntry(ctx, e); act {
				timer.Reset(next)
			}
		case <-lost:
			timer.Reset(0)
		case <-timer.C:
			if watcher == nil {
				watcher = m.lease.watch(ctx)
			}
			timer.Reset(m.tick(ctx, watcher != nil))
		}
	}
}

// tick renews a held lease, or tries to acquire a free one, and returns
// the time to the next tick. With watched, the key's watch is running.
func (m *LeaseManager) tick(ctx context.Context, watched bool) time.Duration {
	l := m.lease
	if l.IsHeld() {
		if _, err := l.Renew(ctx); err != nil && ctx.Err() == nil {
			l.logger.Debug("natskvlease: renew", "error", err)
		}
		return m.nextTick()
	}
	_, err := l.acquire(ctx, watched)
	if recheck, lost := contended(err); lost {
		// The other write is on its way to the watch, which resets the
		// timer; look again soon in case it never lands.
		return recheck
	}
	if err != nil && ctx.Err() == nil {
		l.logger.Debug("natskvlease: acquire", "error", err)
	}
	return m.nextTick()
}

// onEntry reacts to a watched change of the key and returns the time to
// the next tick if it changes. A marker while waiting means the key is
// free: acquire now. A revision not ours while holding means we may have
// lost it: renew now, which confirms or refutes that with one write.
// Another's write while waiting shows the watch alive: the poll that
// covers a silent watch starts again.
func (m *LeaseManager) onEntry(ctx context.Context, e jetstream.KeyValueEntry) (next time.Duration, act bool) {
	l := m.lease
	s := snapshotOf(e)
	l.observe(s)
	ours := !s.vacant && l.isOwner(s.value)
	l.mu.Lock()
	held, rev := l.held && time.Now().Before(l.deadline), l.rev
	l.mu.Unlock()
	switch {
	case held && s.rev > rev && !ours:
		return m.tick(ctx, true), true
	case held:
		return 0, false
	case s.vacant:
		return m.tick(ctx, true), true
	case !ours:
		return m.nextTick(), true
	}
	return 0, false
}

// nextTick is the time to the next renewal while held, or to the next
// poll while waiting: half a TTL with ±20% jitter, so that waiters do not
// poll in step.
func (m *LeaseManager) nextTick() time.Duration {
	l := m.lease
	ttl := l.TTL()
	if l.IsHeld() {
		return time.Duration(float64(ttl) * l.cfg.RenewRatio)
	}
	return pollInterval(ttl)
}
