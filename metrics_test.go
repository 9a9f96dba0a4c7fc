package natskvlease

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// eventLog is a Metrics that keeps what it is told.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (r *eventLog) Record(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *eventLog) count(match func(Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if match(e) {
			n++
		}
	}
	return n
}

func kindIs(k EventKind) func(Event) bool { return func(e Event) bool { return e.Kind == k } }

func opIs(op, result string) func(Event) bool {
	return func(e Event) bool { return e.Kind == EventOperation && e.Op == op && e.Result == result }
}

// TestLeaseMetrics scripts acquire, renew, a refused acquire, a handoff
// through the watch, a loss by takeover and a release, and checks each is
// reported once, with its fields.
func TestLeaseMetrics(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	ctx := natstest.Context(t)
	ma, mb := &eventLog{}, &eventLog{}
	a := NewLease(kv, LeaseConfig{Key: "job", Value: []byte("a"), Metrics: ma})
	b := NewLease(openBucket(t, srv, kv.Bucket()), LeaseConfig{Key: "job", Value: []byte("b"), Metrics: mb})

	tok := mustAcquire(t, a)
	if ok, err := a.Renew(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, _ := b.Acquire(ctx); ok {
		t.Fatal("b acquired a held key")
	}
	waited := make(chan error, 1)
	go func() { waited <- b.AcquireWait(ctx) }()
	natstest.Eventually(t, 5*time.Second, "b's watch", func() bool { return consumers(t, holderJS(t, srv), kv.Bucket()) == waitingWatches })
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	// b loses the key to a foreign write, noticed at its next renewal.
	if _, err := kv.Put(ctx, "job", []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Renew(ctx); ok || err != nil {
		t.Fatalf("b.Renew after a takeover = %v, %v", ok, err)
	}

	checks := []struct {
		name string
		log  *eventLog
		is   func(Event) bool
		want int
	}{
		{"a acquired", ma, kindIs(EventAcquired), 1},
		{"a acquire ok", ma, opIs(OpAcquire, ResultOK), 1},
		{"a renew ok", ma, opIs(OpRenew, ResultOK), 1},
		{"a renewed", ma, kindIs(EventRenewed), 1},
		{"a release ok", ma, opIs(OpRelease, ResultOK), 1},
		{"a released", ma, kindIs(EventReleased), 1},
		{"a lost", ma, kindIs(EventLost), 0},
		{"b acquire taken", mb, opIs(OpAcquire, ResultTaken), 2}, // Acquire, and AcquireWait's first try
		{"b acquired", mb, kindIs(EventAcquired), 1},
		{"b handoff", mb, kindIs(EventHandoff), 1},
		{"b renew taken", mb, opIs(OpRenew, ResultTaken), 1},
		{"b lost taken over", mb, func(e Event) bool { return e.Kind == EventLost && e.Cause == CauseTakenOver }, 1},
		{"b released", mb, kindIs(EventReleased), 0},
	}
	for _, c := range checks {
		if got := c.log.count(c.is); got != c.want {
			t.Errorf("%s: %d events, want %d", c.name, got, c.want)
		}
	}
	ma.mu.Lock()
	defer ma.mu.Unlock()
	for _, e := range ma.events {
		if e.Key != "job" {
			t.Errorf("event %+v without its key", e)
		}
		if e.Kind == EventAcquired && e.Token != tok {
			t.Errorf("acquired token %d, want %d", e.Token, tok)
		}
		if e.Kind == EventRenewed && (e.Left <= 0 || e.Left > 9*time.Second) {
			t.Errorf("renewal margin %v, want within (0, 9s]", e.Left)
		}
		if e.Kind == EventOperation && e.Duration <= 0 {
			t.Errorf("operation %+v without a duration", e)
		}
	}
}

func TestCauseOf(t *testing.T) {
	cases := []struct {
		err  error
		want LossCause
	}{
		{errTakenOver, CauseTakenOver},
		{errDeadline, CauseDeadline},
		{lossCause(errDeadline), CauseDeadline},
		{lossCause(natsClosed()), CauseConnectionClosed},
		{lossCause(errorString("refused by the server")), CauseRefused},
	}
	for _, c := range cases {
		if got := causeOf(c.err); got != c.want {
			t.Errorf("causeOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func natsClosed() error { return fmt.Errorf("renewal refused: %w", nats.ErrConnectionClosed) }
