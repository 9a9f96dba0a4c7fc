package faultproxy_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease/internal/faultproxy"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every eventually-style check; the machine is small and -race
// is slow, so it is generous.
const wait = 20 * time.Second

// setup starts a server, a responder on subject "svc" connected directly,
// and a proxy in front of the server.
func setup(t *testing.T) (*natstest.Server, *faultproxy.Proxy) {
	t.Helper()
	s := natstest.Start(t)
	direct := s.Connect()
	if _, err := direct.Subscribe("svc", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return s, faultproxy.New(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port())))
}

func request(nc *nats.Conn, timeout time.Duration) error {
	_, err := nc.Request("svc", []byte("ping"), timeout)
	return err
}

// eventually retries f every 25ms until it returns nil or wait passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, wait, err)
		}
		<-tick.C
	}
}

func TestForwards(t *testing.T) {
	_, p := setup(t)
	nc := natstest.Connect(t, p.URL())
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request through proxy: %v", err)
	}
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns() = %d, want 1", n)
	}
}

func TestBlackhole(t *testing.T) {
	_, p := setup(t)
	nc := natstest.Connect(t, p.URL())
	// The first request subscribes the reply inbox; do it while healthy so
	// the subscription is not lost in the blackhole.
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request before blackhole: %v", err)
	}
	p.Blackhole(true)
	if err := request(nc, 300*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("request in blackhole: got %v, want timeout", err)
	}
	if !nc.IsConnected() || p.Conns() != 1 {
		t.Fatalf("blackhole closed the connection (client connected %v, proxied %d)", nc.IsConnected(), p.Conns())
	}
	// New connections are blackholed too: the server's INFO never arrives.
	if c, err := nats.Connect(p.URL(), nats.Timeout(300*time.Millisecond)); err == nil {
		c.Close()
		t.Fatalf("connected through a blackhole")
	}
	p.Blackhole(false)
	eventually(t, "request after blackhole", func() error { return request(nc, time.Second) })
}

func TestBlackholeServerToClientAppliesWrite(t *testing.T) {
	s, p := setup(t)
	_, direct := s.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kvDirect, err := direct.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	js, err := jetstream.New(natstest.Connect(t, p.URL()))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	kv, err := js.KeyValue(ctx, "b")
	if err != nil {
		t.Fatalf("bucket through proxy: %v", err)
	}

	p.BlackholeServerToClient(true)
	putCtx, putCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = kv.Put(putCtx, "k", []byte("ambiguous"))
	putCancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put through a server-to-client blackhole: got %v, want deadline exceeded", err)
	}
	eventually(t, "write visible directly", func() error {
		e, err := kvDirect.Get(ctx, "k")
		if err == nil && string(e.Value()) != "ambiguous" {
			err = errors.New("value " + string(e.Value()))
		}
		return err
	})

	p.BlackholeServerToClient(false)
	eventually(t, "put after blackhole", func() error {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := kv.Put(c, "k", []byte("acked"))
		return err
	})
}

func TestCutAllReconnects(t *testing.T) {
	_, p := setup(t)
	reconnected := make(chan struct{}, 1)
	nc := natstest.Connect(t, p.URL(), nats.ReconnectHandler(func(*nats.Conn) {
		select {
		case reconnected <- struct{}{}:
		default:
		}
	}))
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request before cut: %v", err)
	}
	p.CutAll()
	select {
	case <-reconnected:
	case <-time.After(wait):
		t.Fatalf("client did not reconnect within %v of CutAll", wait)
	}
	eventually(t, "request after reconnect", func() error { return request(nc, time.Second) })
}

func TestRefuseNew(t *testing.T) {
	_, p := setup(t)
	kept := natstest.Connect(t, p.URL())
	p.RefuseNew(true)
	if nc, err := nats.Connect(p.URL(), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatalf("connect succeeded while refusing")
	}
	if err := request(kept, 5*time.Second); err != nil {
		t.Fatalf("existing connection broken by RefuseNew: %v", err)
	}
	p.RefuseNew(false)
	nc := natstest.Connect(t, p.URL())
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request after RefuseNew(false): %v", err)
	}
}

func TestSetDelay(t *testing.T) {
	_, p := setup(t)
	nc := natstest.Connect(t, p.URL())
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request before delay: %v", err)
	}
	const delay = 200 * time.Millisecond
	p.SetDelay(delay)
	start := time.Now()
	if err := request(nc, wait); err != nil {
		t.Fatalf("delayed request: %v", err)
	}
	if took := time.Since(start); took < delay {
		t.Fatalf("request took %v with a %v delay", took, delay)
	}
	p.SetDelay(0)
}

func TestCloseIsIdempotentAndStopsForwarding(t *testing.T) {
	_, p := setup(t)
	nc := natstest.Connect(t, p.URL(), nats.MaxReconnects(0))
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	p.Close()
	p.Close()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatalf("client connection not closed within %v of proxy Close", wait)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatalf("proxy still accepts after Close")
	}
}
