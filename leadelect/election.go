package leadelect

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// Election is one candidate in a leader election. Create it with New,
// campaign with Run, step down with Resign or by ending Run's context.
// It is safe for concurrent use; Run runs one at a time.
type Election struct {
	cfg    Config
	js     jetstream.JetStream
	logger *slog.Logger
	nonce  string
	bucket *bucketOpener

	mu        sync.Mutex
	lease     *natskvlease.Lease // created when the bucket is opened
	running   bool
	term      *term     // the current term; nil when not leading
	since     time.Time // start of the latest term, kept across a resumed one
	sinceTerm uint64    // token of that term
}

// New returns a candidate for the election cfg describes. It validates
// cfg and does no I/O: the bucket is opened, and created if missing, by
// the first Run, Leader or Observe, which report bucket errors. Errors
// wrap natskvlease.ErrInvalidConfig, naming the field, or
// natskvlease.ErrNatsVersionNotSupported when js is connected to a
// server older than 2.11.
func New(js jetstream.JetStream, cfg Config) (*Election, error) {
	if js == nil {
		return nil, &natskvlease.ConfigError{Package: "leadelect", Field: "jetstream.JetStream", Reason: "is nil"}
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if js.Conn().ConnectedServerVersion() != "" { // checked again on opening otherwise
		if err := natskvlease.ValidateNatsVersion(js.Conn()); err != nil {
			return nil, err
		}
	}
	logger := cfg.Logger.With("election", cfg.Bucket+"/"+cfg.Key, "id", cfg.ID)
	spec := bucketSpec{name: cfg.Bucket, create: true, ttl: cfg.TTL, fileStorage: cfg.FileStorage, replicas: cfg.Replicas}
	return &Election{
		cfg:    cfg,
		js:     js,
		logger: logger,
		nonce:  rand.Text(),
		bucket: newBucketOpener(js, spec, logger),
	}, nil
}

// ID returns the candidate's configured ID.
func (e *Election) ID() string { return e.cfg.ID }

// IsLeader reports whether this candidate leads now: a term is running,
// it has not been resigned or cancelled, and the lease's safety deadline
// has not passed (see natskvlease.Lease.IsHeld). It does no I/O.
func (e *Election) IsLeader() bool {
	_, ok := e.leading()
	return ok
}

// Token returns the fencing token of the current term, or 0 when
// IsLeader is false. To fence the work of one term, prefer
// TokenFromContext on the context given to OnStartedLeading: Token may
// already belong to a later term.
func (e *Election) Token() uint64 {
	tok, _ := e.leading()
	return tok
}

func (e *Election) leading() (uint64, bool) {
	e.mu.Lock()
	t := e.term
	e.mu.Unlock()
	if t == nil || t.ctx.Err() != nil || t.lease.Token() != t.token {
		return 0, false
	}
	return t.token, true
}

// Leader reads the election's key and returns the current leader. A
// vacant key gives ErrNoLeader. The read may be answered by any replica
// of a replicated bucket, so it can lag by a few milliseconds; for this
// candidate's own status IsLeader is exact.
func (e *Election) Leader(ctx context.Context) (LeaderInfo, error) {
	return leader(ctx, e.bucket.open, e.cfg.Key)
}

// Observe returns a channel that reports every change of leadership
// from the key's watch, whether or not this Election runs: first the
// current state, then each new term (a new leader, or the same one
// again after a vacancy) and each vacancy (ID empty). Renewals are not
// reported. The channel is closed when ctx ends, when the connection is
// closed, or at once if the bucket cannot be used (logged).
//
// The watch is never blocked by the reader: the channel buffers 64
// changes, and a reader further behind loses the oldest unread ones, so
// the latest state is always delivered and order is kept.
func (e *Election) Observe(ctx context.Context) <-chan LeaderInfo {
	return observe(ctx, e.bucket.open, e.cfg.Key, e.js, e.logger)
}

// Resign steps down at once: IsLeader turns false and the leader
// context is cancelled before it returns. Run then releases the key as
// soon as OnStartedLeading has returned, and other candidates, woken by
// the key's watch, take over within milliseconds. This candidate does
// not campaign again until another leader is seen or one TTL has
// passed, so with no other candidate it leads again after one TTL.
//
// Resign waits for the release and returns its error, or ctx's if ctx
// ends first. Called with the leader context, or one derived from it,
// as leader work naturally does, Resign does not wait: the release
// waits for OnStartedLeading to return. (Called from OnStartedLeading's
// goroutine with another context, it waits until that context ends.)
//
// With no term running, Resign releases a key kept by KeepOnCancel after
// Run returned; otherwise it returns ErrNotLeader, which is harmless.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	t, running, lease := e.term, e.running, e.lease
	e.mu.Unlock()
	switch {
	case t != nil:
		err := t.resign(ctx)
		if !errors.Is(err, errTermEnding) {
			return err
		}
		// The term was already ending (kept or released); look again.
		select {
		case <-t.ended:
		case <-ctx.Done():
			return ctx.Err()
		}
		return e.releaseKept(ctx)
	case running || lease == nil:
		return ErrNotLeader
	}
	return e.releaseKept(ctx)
}

// releaseKept releases a lease that Run left held when it returned.
func (e *Election) releaseKept(ctx context.Context) error {
	e.mu.Lock()
	running, lease := e.running, e.lease
	e.mu.Unlock()
	if running || lease == nil {
		return ErrNotLeader
	}
	err := lease.Release(ctx)
	if errors.Is(err, natskvlease.ErrLeaseNotHeld) {
		return ErrNotLeader
	}
	return err
}

// open opens the bucket and creates the lease, once.
func (e *Election) open(ctx context.Context) (*natskvlease.Lease, error) {
	kv, err := e.bucket.open(ctx)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lease == nil {
		e.lease = natskvlease.NewLease(kv, natskvlease.LeaseConfig{
			Key:        e.cfg.Key,
			TTL:        e.cfg.TTL,
			RenewRatio: e.cfg.RenewRatio,
			Value:      e.identity(time.Time{}, 0),
			IsOwner:    e.isOwner,
			Logger:     e.logger,
			Metrics:    e.cfg.Metrics,
		})
	}
	// The lease's own rule decides whether the bucket can enforce the
	// TTL (at most its MaxAge; per-message TTLs or a MaxAge to expire a
	// dead leader), as it does for every lease.
	if err := e.lease.Check(ctx); err != nil {
		return nil, err
	}
	return e.lease, nil
}

func (e *Election) identity(since time.Time, token uint64) []byte {
	return identity{ID: e.cfg.ID, Nonce: e.nonce, Since: since, Token: token}.encode()
}

// isOwner: a stored value is ours when both the ID and this instance's
// nonce match, so candidates sharing an ID are told apart.
func (e *Election) isOwner(value []byte) bool {
	id, err := decodeIdentity(value)
	return err == nil && id.ID == e.cfg.ID && id.Nonce == e.nonce
}
