package natskvlease

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// A connection closed for good is an error no wait can cure: a waiter on
// it returns within a second, with an error that says so, instead of
// retrying until its context ends (for ever under context.Background).

// closedWithin is how long a waiter may take to notice its connection
// was closed: the contract's second, with no slack needed (it is woken
// by the watch's end, not by a poll).
const closedWithin = time.Second

// waiterOnOwnConn returns a KeyValue on a connection of its own, and
// that connection, with the key held by another lease.
func waiterOnOwnConn(t *testing.T, srv *natstest.Server, bucket string) (*nats.Conn, jetstream.KeyValue) {
	t.Helper()
	nc, js := srv.JetStream()
	kv, err := js.KeyValue(natstest.Context(t), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return nc, BindJetStream(kv, js)
}

func TestClosedConnectionEndsAcquireWait(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	holder := NewLease(kv, leaseCfg("job", "holder"))
	mustAcquire(t, holder)

	nc, wkv := waiterOnOwnConn(t, srv, kv.Bucket())
	w := NewLease(wkv, leaseCfg("job", "waiter"))
	done := make(chan error, 1)
	go func() { done <- w.AcquireWait(t.Context()) }()
	natstest.Eventually(t, 5*time.Second, "the waiter's watch", func() bool { return consumers(t, holderJS(t, srv), kv.Bucket()) == waitingWatches })
	closed := time.Now()
	nc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, nats.ErrConnectionClosed) {
			t.Fatalf("AcquireWait = %v; want an error wrapping nats.ErrConnectionClosed", err)
		}
		if took := time.Since(closed); took > closedWithin {
			t.Fatalf("AcquireWait returned %v after the connection closed; want within %v", took, closedWithin)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AcquireWait still waiting 10s after its connection was closed")
	}
	// And on a connection already closed, at once.
	if err := w.AcquireWait(t.Context()); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("AcquireWait on a closed connection = %v", err)
	}
}

func TestClosedConnectionEndsLeaseManager(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	holder := NewLease(kv, leaseCfg("job", "holder"))
	mustAcquire(t, holder)

	nc, wkv := waiterOnOwnConn(t, srv, kv.Bucket())
	m := NewLeaseManager(wkv, leaseCfg("job", "manager"))
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 5*time.Second, "the manager's watch", func() bool { return consumers(t, holderJS(t, srv), kv.Bucket()) == waitingWatches })
	closed := time.Now()
	nc.Close()
	select {
	case <-m.Ended():
		if took := time.Since(closed); took > closedWithin {
			t.Fatalf("the campaign ended %v after the connection closed; want within %v", took, closedWithin)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the campaign still runs 10s after its connection was closed")
	}
	if err := m.Err(); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("Err() = %v; want an error wrapping nats.ErrConnectionClosed", err)
	}
	if err := m.Stop(t.Context()); err != nil {
		t.Fatalf("Stop after the campaign ended = %v", err)
	}
}

// holderJS is a JetStream handle on a connection of its own, for the
// test's own reads.
func holderJS(t *testing.T, srv *natstest.Server) jetstream.JetStream {
	t.Helper()
	_, js := srv.JetStream()
	return js
}
