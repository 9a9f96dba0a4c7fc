package natskvlease

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natskvlease/natskvlease/internal/turnstile"
)

// ErrAlreadyStarted is returned by LeaseManager.Start on a running
// manager.
var ErrAlreadyStarted = errors.New("natskvlease: already started")

// LeaseManager campaigns for a lease continuously: it acquires the lease
// whenever it is free, renews it while held, and tries again after a
// loss, until stopped.
//
// It is a Lease composed, with no timer of its own: AcquireWait to take
// the key (woken by the key's watch, so a graceful handoff takes
// milliseconds, not a poll interval), KeepAlive to renew it, and the
// lease's Done to learn of a loss. After a loss it waits for the key's
// expiry marker rather than writing over its own lapsed value.
//
// Managers of one key on one bound KeyValue (see BindJetStream) in one
// process take turns: one waits on the server, the others wait in the
// process, first come first served, so a crowd of them costs the server
// one watch and one write per handoff.
//
// Callbacks in the LeaseConfig run as described for LeaseCallbacks.
type LeaseManager struct {
	lease  *Lease
	turns  *turnstile.Set // nil unless kv is bound
	key    string
	logger *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	ended   chan struct{} // closed when the campaign goroutine returns
	err     error         // why the campaign ended on its own
}

// NewLeaseManager returns a manager for the lease cfg describes in kv.
// An invalid configuration is reported by Start.
func NewLeaseManager(kv jetstream.KeyValue, cfg LeaseConfig) *LeaseManager {
	return &LeaseManager{
		lease:  NewLease(kv, cfg),
		turns:  turnsOf(kv),
		key:    cfg.Key,
		logger: orDiscard(cfg.Logger).With("key", cfg.Key),
		ended:  make(chan struct{}),
	}
}

// Start begins campaigning in a new goroutine and returns at once. The
// campaign ends, releasing the lease, when ctx ends or Stop is called,
// or on its own on an error that retrying cannot cure (see Err).
// Start reports a configuration error, or a TTL the bucket cannot honour,
// before campaigning; server outages are not errors here, the campaign
// retries until it reaches the server. Start after Stop returns
// ErrProviderStopped; a second Start returns ErrAlreadyStarted.
func (m *LeaseManager) Start(ctx context.Context) error {
	m.mu.Lock()
	stopped, started := m.stopped, m.started
	m.mu.Unlock()
	if stopped {
		return ErrProviderStopped
	}
	if started {
		return ErrAlreadyStarted
	}
	if err := m.lease.Check(ctx); IsFinal(err) {
		return err
	} else if err != nil {
		m.logger.Warn("natskvlease: bucket not reachable yet; campaigning anyway", "error", err)
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
	m.started, m.cancel = true, cancel
	go m.run(loopCtx)
	return nil
}

// Stop ends the campaign, releases the lease if held, and waits for the
// campaign goroutine to end or ctx to end, whichever comes first. A second
// Stop returns ErrProviderStopped.
func (m *LeaseManager) Stop(ctx context.Context) error {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrProviderStopped
	}
	m.stopped = true
	cancel := m.cancel
	m.mu.Unlock()
	if cancel == nil {
		return nil // never started
	}
	cancel()
	select {
	case <-m.ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ended returns a channel closed when the campaign has ended: by Stop,
// by the end of Start's context, or on its own (see Err).
func (m *LeaseManager) Ended() <-chan struct{} { return m.ended }

// Err returns the error that ended the campaign on its own, once Ended
// is closed: one that retrying cannot cure (see IsFinal), such as a
// connection closed for good (errors.Is(err, nats.ErrConnectionClosed)).
// It is nil while the campaign runs and after Stop or the end of
// Start's context.
func (m *LeaseManager) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
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

// run is the campaign: wait for the key, keep it until it is lost, and
// again, until ctx ends.
func (m *LeaseManager) run(ctx context.Context) {
	defer close(m.ended)
	l := m.lease
	defer l.StopCamping() // stops the renewals and releases
	for {
		err := m.acquire(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil: // final
			m.logger.Error("natskvlease: campaign ends", "error", err)
			m.mu.Lock()
			m.err = err
			m.mu.Unlock()
			return
		}
		if err := l.KeepAlive(context.Background()); err != nil {
			continue // lost at once
		}
		select {
		case <-ctx.Done():
			return
		case <-l.Done(): // lost: campaign again
		}
	}
}

// acquire waits for the lease. Managers of one key on one bound KeyValue
// wait on the server one at a time; while another has the turn, this
// one neither watches nor polls.
func (m *LeaseManager) acquire(ctx context.Context) error {
	if m.turns != nil {
		pass, err := m.turns.Wait(ctx, m.key)
		if err != nil {
			return err
		}
		defer pass() // the next manager in the process waits while we hold
	}
	return m.lease.AcquireWait(ctx)
}
