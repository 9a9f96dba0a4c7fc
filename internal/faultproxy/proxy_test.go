package faultproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
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

// rawPair returns the two ends of one TCP connection through p's proxy
// to a plain listener: the client end (dialled to the proxy) and the
// server end (accepted by the listener).
func rawPair(t *testing.T) (p *faultproxy.Proxy, client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p = faultproxy.New(t, ln.Addr().String())
	client, err = net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return p, client, server
}

// readFull reads exactly n bytes from c within wait.
func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return buf
}

// expectSilence fails if c delivers any byte within d.
func expectSilence(t *testing.T, c net.Conn, d time.Duration, side string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	if n > 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s received %d bytes (err %v) while frozen", side, n, err)
	}
}

func TestFreezeHoldsThenDeliversInOrder(t *testing.T) {
	p, client, server := rawPair(t)
	// Healthy first, so the freeze is what stops the bytes.
	client.Write([]byte("a"))
	if got := readFull(t, server, 1); string(got) != "a" {
		t.Fatalf("server got %q before freezing", got)
	}

	p.Freeze(true)
	// Much more than one chunk client-to-server, so that order across
	// chunks (and across the kernel's buffers) is checked too.
	up := make([]byte, 300<<10)
	for i := range up {
		up[i] = byte(i % 251)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(up)
		wrote <- err
	}()
	down := []byte("xyz")
	for _, b := range down {
		if _, err := server.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	natstest.Eventually(t, wait, "a chunk held in each direction", func() bool { return p.HeldChunks() >= 2 })
	expectSilence(t, server, 200*time.Millisecond, "server")
	expectSilence(t, client, 50*time.Millisecond, "client")

	p.Freeze(false)
	if got := readFull(t, server, len(up)); !bytes.Equal(got, up) {
		t.Fatalf("server got the %d frozen bytes out of order or altered", len(up))
	}
	if got := readFull(t, client, len(down)); !bytes.Equal(got, down) {
		t.Fatalf("client got %q, want %q", got, down)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("client write: %v", err)
	}
	// The connection survived.
	client.Write([]byte("b"))
	if got := readFull(t, server, 1); string(got) != "b" {
		t.Fatalf("server got %q after unfreezing", got)
	}
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns() = %d after the freeze, want 1", n)
	}
}

func TestFreezeKeepsNATSConnection(t *testing.T) {
	_, p := setup(t)
	nc := natstest.Connect(t, p.URL())
	if err := request(nc, 5*time.Second); err != nil {
		t.Fatalf("request before freeze: %v", err)
	}
	p.Freeze(true)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- request(nc, wait) }()
	select {
	case err := <-done:
		t.Fatalf("request answered while frozen (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	p.Freeze(false)
	if err := <-done; err != nil {
		t.Fatalf("request frozen then thawed: %v", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("request took %v across a 300ms freeze", took)
	}
	if !nc.IsConnected() || nc.Stats().Reconnects != 0 {
		t.Fatalf("the freeze broke the connection (connected %v, reconnects %d)", nc.IsConnected(), nc.Stats().Reconnects)
	}
}
