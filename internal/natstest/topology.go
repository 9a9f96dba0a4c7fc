package natstest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// StartConfig runs an embedded nats-server configured by conf, a
// nats-server configuration file's text, such as an accounts block with
// users, permissions, exports and imports. "STORE_DIR" in conf is
// replaced by a temporary directory, and the server listens on a random
// loopback port whatever conf says. It is shut down by t.Cleanup.
func StartConfig(t testing.TB, conf string, opts ...Option) *Server {
	t.Helper()
	dir := t.TempDir()
	conf = strings.ReplaceAll(conf, "STORE_DIR", filepath.ToSlash(filepath.Join(dir, "js")))
	path := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatalf("natstest: write config: %v", err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("natstest: config: %v\n%s", err, conf)
	}
	o.ServerName, o.Host, o.Port, o.NoLog, o.NoSigs = "natstest", "127.0.0.1", server.RANDOM_PORT, true, true
	for _, opt := range opts {
		opt(o)
	}
	s := &Server{t: t, opts: o}
	s.start()
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

// Hub and leaf JetStream domains of StartHubLeaf.
const (
	HubDomain  = "hub"
	LeafDomain = "leaf"
)

// HubLeaf is a hub server with JetStream in domain HubDomain and a leaf
// node connected to it, both on random loopback ports.
type HubLeaf struct {
	Hub  *Server
	Leaf *Server
}

// StartHubLeaf starts a hub with JetStream (domain HubDomain) and a leaf
// node that connects to it: with JetStream in domain LeafDomain when
// leafJetStream is set, without JetStream otherwise. It returns once the
// hub's JetStream answers a client of the leaf node through the domain.
func StartHubLeaf(t testing.TB, leafJetStream bool) *HubLeaf {
	t.Helper()
	_ = t.TempDir() // removed after the servers below are shut down
	port := freePorts(t, 1)[0]
	hub := Start(t, func(o *server.Options) {
		o.ServerName = "hub"
		o.JetStreamDomain = HubDomain
		o.LeafNode.Host = "127.0.0.1"
		o.LeafNode.Port = port
	})
	remote := &server.RemoteLeafOpts{URLs: []*url.URL{mustURL(t, fmt.Sprintf("nats-leaf://127.0.0.1:%d", port))}}
	leaf := Start(t, func(o *server.Options) {
		o.ServerName = "leaf"
		o.JetStream = leafJetStream
		if leafJetStream {
			o.JetStreamDomain = LeafDomain
		}
		o.LeafNode.Remotes = []*server.RemoteLeafOpts{remote}
	})
	hl := &HubLeaf{Hub: hub, Leaf: leaf}
	nc := leaf.Connect()
	defer nc.Close()
	js, err := jetstream.NewWithDomain(nc, HubDomain)
	if err != nil {
		t.Fatal(err)
	}
	if !poll(clusterReadyTimeout, func() bool {
		if hub.NATS().NumLeafNodes() != 1 {
			return false
		}
		ctx, cancel := contextWithTimeout(time.Second)
		defer cancel()
		info, err := js.AccountInfo(ctx)
		return err == nil && info.Domain == HubDomain
	}) {
		t.Fatalf("natstest: the hub's JetStream does not answer through the leaf node within %v", clusterReadyTimeout)
	}
	return hl
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
