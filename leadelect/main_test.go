package leadelect_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Timeouts are generous: the suite runs under -race on two cores.
const (
	testTTL = time.Second
	// slowPollTTL is the TTL of the tests that tell a handoff through the
	// watch from one through a poll (at least 0.4 × TTL away) or an
	// expiry (TTL away): a release is seen within handoffMax, far from
	// both even on a loaded machine. How fast handoffs are is for the
	// benchmarks.
	slowPollTTL = 4 * time.Second
	handoffMax  = time.Second
	waitTimeout = 10 * time.Second // backstop for anything awaited
)

var bucketSeq atomic.Int64

// env is one embedded server and one election (bucket and key) on it.
type env struct {
	t      *testing.T
	srv    *natstest.Server
	bucket string
	key    string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, srv: natstest.Start(t), bucket: fmt.Sprintf("le_%d", bucketSeq.Add(1)), key: "leader"}
}

func (v *env) config(id string) leadelect.Config {
	return leadelect.Config{Bucket: v.bucket, Key: v.key, ID: id, TTL: testTTL}
}

// slowPollConfig is config with slowPollTTL, for tests that time a
// handoff against handoffMax.
func (v *env) slowPollConfig(id string) leadelect.Config {
	c := v.config(id)
	c.TTL = slowPollTTL
	return c
}

// candidate returns an Election on a connection of its own, as another
// process would have.
func (v *env) candidate(cfg leadelect.Config) (*leadelect.Election, *nats.Conn) {
	v.t.Helper()
	nc, js := v.srv.JetStream()
	e, err := leadelect.New(js, cfg)
	if err != nil {
		v.t.Fatalf("New(%+v): %v", cfg, err)
	}
	return e, nc
}

func (v *env) observer() *leadelect.Observer {
	v.t.Helper()
	_, js := v.srv.JetStream()
	o, err := leadelect.NewObserver(js, leadelect.ObserverConfig{Bucket: v.bucket, Key: v.key})
	if err != nil {
		v.t.Fatalf("NewObserver: %v", err)
	}
	return o
}

// running is one Run in its own goroutine.
type running struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
}

// run starts e.Run; the test's cleanup stops it and waits for it.
func run(t *testing.T, e *leadelect.Election, cb leadelect.Callbacks) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- e.Run(ctx, cb) }()
	t.Cleanup(func() { cancel(); _ = r.wait() })
	return r
}

// stop cancels Run's context and returns what Run returned.
func (r *running) stop() error {
	r.t.Helper()
	r.cancel()
	return r.wait()
}

func (r *running) wait() error {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // later waits see it too
		return err
	case <-time.After(waitTimeout):
		r.t.Errorf("Run did not return within %v", waitTimeout)
		return errors.New("run did not return")
	}
}

// term is one leadership term as the arena saw it.
type term struct {
	name  string
	token uint64
	at    time.Time
	ctx   context.Context
}

// arena gives candidates callbacks that check, as terms start, that at
// most one leader's work runs at a time, that the previous leader's
// context was cancelled before the next leader started, and that tokens
// strictly increase.
type arena struct {
	t      *testing.T
	starts chan term

	mu         sync.Mutex
	active     int
	terms      []term
	stopped    map[string]int
	violations []string
}

func newArena(t *testing.T) *arena {
	a := &arena{t: t, starts: make(chan term, 1000), stopped: map[string]int{}}
	t.Cleanup(a.check)
	return a
}

func (a *arena) callbacks(name string) leadelect.Callbacks {
	return leadelect.Callbacks{
		OnStartedLeading: func(ctx context.Context) {
			tok, _ := leadelect.TokenFromContext(ctx)
			tm := term{name: name, token: tok, at: time.Now(), ctx: ctx}
			a.begin(tm)
			a.starts <- tm
			<-ctx.Done()
			a.mu.Lock()
			a.active--
			a.mu.Unlock()
		},
		OnStoppedLeading: func() {
			a.mu.Lock()
			a.stopped[name]++
			a.mu.Unlock()
		},
	}
}

func (a *arena) begin(tm term) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.active++
	if a.active > 1 {
		a.violate("%s started while %d leaders' work ran", tm.name, a.active-1)
	}
	if n := len(a.terms); n > 0 {
		prev := a.terms[n-1]
		if prev.ctx.Err() == nil {
			a.violate("%s started (token %d) before %s's leader context (token %d) was cancelled", tm.name, tm.token, prev.name, prev.token)
		}
		if tm.token <= prev.token {
			a.violate("token %d of %s does not exceed %d of %s", tm.token, tm.name, prev.token, prev.name)
		}
	}
	a.terms = append(a.terms, tm)
}

func (a *arena) violate(format string, args ...any) {
	a.violations = append(a.violations, fmt.Sprintf(format, args...))
}

// next waits for the next term to start.
func (a *arena) next() term {
	a.t.Helper()
	select {
	case tm := <-a.starts:
		return tm
	case <-time.After(waitTimeout):
		a.t.Fatalf("no term started within %v", waitTimeout)
		return term{}
	}
}

// none checks that no term starts within d.
func (a *arena) none(d time.Duration) {
	a.t.Helper()
	select {
	case tm := <-a.starts:
		a.t.Fatalf("%s started leading (token %d); expected no leader for %v", tm.name, tm.token, d)
	case <-time.After(d):
	}
}

func (a *arena) stops(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopped[name]
}

func (a *arena) check() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, v := range a.violations {
		a.t.Error(v)
	}
	toks := make([]uint64, len(a.terms))
	for i, tm := range a.terms {
		toks[i] = tm.token
	}
	if !slices.IsSorted(toks) {
		a.t.Errorf("tokens not increasing: %v", toks)
	}
}

// leaderIs waits until Leader reports id, and returns what it reported.
func leaderIs(t *testing.T, e interface {
	Leader(context.Context) (leadelect.LeaderInfo, error)
}, id string) leadelect.LeaderInfo {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		info, err := e.Leader(natstest.Context(t))
		if err == nil && info.ID == id {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("Leader: got %+v, %v; want %q", info, err, id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
