// Package natstest starts real nats-servers inside the test process for the
// natskvlease test suites. Servers listen on random loopback ports and keep
// their JetStream store in a per-test temporary directory; both are removed
// when the test ends.
package natstest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is one embedded nats-server with JetStream enabled.
type Server struct {
	t    testing.TB
	opts *server.Options
	srv  *server.Server
}

// Option adjusts the server options before start.
type Option func(*server.Options)

// WithoutJetStream starts the server with JetStream disabled.
func WithoutJetStream() Option { return func(o *server.Options) { o.JetStream = false } }

// Start runs a single embedded nats-server on a random loopback port with
// JetStream stored under t.TempDir(). It is shut down by t.Cleanup.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := &server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   t.TempDir(),
	}
	for _, opt := range opts {
		opt(o)
	}
	s := &Server{t: t, opts: o}
	s.start()
	// A restart must come back on the same port so that clients reconnect.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	srv, err := server.NewServer(s.opts)
	if err != nil {
		s.t.Fatalf("natstest: new server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatalf("natstest: server not ready within 10s")
	}
	s.srv = srv
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Port is the client port; it stays the same across Restart.
func (s *Server) Port() int { return s.opts.Port }

// NATS returns the underlying server.
func (s *Server) NATS() *server.Server { return s.srv }

// Shutdown stops the server and waits for it to finish. Calling it twice is
// harmless.
func (s *Server) Shutdown() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// Restart shuts the server down and starts it again on the same port and
// store directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.start()
}

// Connect opens a client connection that is closed by t.Cleanup. Options
// given are applied after the defaults (fast reconnects, no buffered
// reconnect publishes beyond the default).
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	return Connect(s.t, s.URL(), opts...)
}

// JetStream opens a new connection and returns a JetStream handle on it.
func (s *Server) JetStream(opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	nc := s.Connect(opts...)
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// Connect dials url with test-friendly defaults and closes the connection
// when the test ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	base := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.Timeout(2 * time.Second),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Context returns a context that ends with the test, or after a minute
// as a backstop against a test that hangs.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond every few milliseconds until it holds, and fails
// the test if timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Consumers counts the consumers of a KeyValue bucket's stream: each
// watch of a waiter is one.
func Consumers(t testing.TB, js jetstream.JetStream, bucket string) int {
	t.Helper()
	s, err := js.Stream(Context(t), "KV_"+bucket)
	if err != nil {
		t.Fatalf("stream of bucket %s: %v", bucket, err)
	}
	info, err := s.Info(Context(t))
	if err != nil {
		t.Fatalf("info of bucket %s's stream: %v", bucket, err)
	}
	return info.State.Consumers
}
