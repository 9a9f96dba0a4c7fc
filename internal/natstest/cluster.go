package natstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/faultproxy"
)

// ClusterSize is the number of nodes StartCluster runs.
const ClusterSize = 3

// ClusterName is the cluster name shared by every node of a Cluster.
const ClusterName = "natstest"

// Account is the account every stream of an unauthenticated client lives in.
const Account = "$G"

// clusterReadyTimeout bounds every wait for the cluster (or one node of it)
// to become usable: start-up, restart and leader changes.
const clusterReadyTimeout = 30 * time.Second

// pollInterval is how often cluster state is re-checked while waiting.
const pollInterval = 25 * time.Millisecond

// Cluster is a three-node JetStream cluster running inside the test process.
// Node i has ServerName "n<i>", its own loopback client and cluster ports and
// its own store directory; all of them survive Shutdown/Restart of the node.
// Its methods must be called from the test goroutine.
type Cluster struct {
	t     testing.TB
	nodes []*Server
	down  []bool

	// proxies[i] stands in front of node i's cluster port when the
	// cluster was started by StartRouteProxiedCluster; nil otherwise.
	proxies      []*faultproxy.Proxy
	routeProxied bool
}

// startAttempts is how often StartCluster retries with fresh ports when a
// node cannot listen (a reserved port was taken in between).
const startAttempts = 3

// StartCluster starts three routed JetStream servers and returns once a meta
// leader is elected, every node is current with it and a JetStream account
// info request through a client succeeds. Options apply to every node. The
// nodes are shut down by t.Cleanup before their store directories are
// removed. It fails the test if the cluster is not ready within 30 s.
func StartCluster(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return startCluster(t, false, opts)
}

// StartRouteProxiedCluster is StartCluster with every route connection
// going through a faultproxy: one proxy in front of each node's cluster
// port, which the node advertises as its route address and which the
// nodes' Routes name, so that neither the configured routes nor the ones
// learnt by gossip bypass the proxies. Client connections are direct.
// FreezeRoutes then pauses the traffic between the nodes without
// touching any client. The proxies are closed after the nodes shut down.
func StartRouteProxiedCluster(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return startCluster(t, true, opts)
}

func startCluster(t testing.TB, routeProxied bool, opts []Option) *Cluster {
	t.Helper()
	// The first TempDir call registers the removal of all of the test's
	// temporary directories; it must run after the nodes are shut down,
	// so it is registered before the shutdown.
	_ = t.TempDir()
	c := &Cluster{t: t, down: make([]bool, ClusterSize), routeProxied: routeProxied}
	t.Cleanup(c.shutdownAll)
	var err error
	for range startAttempts {
		if err = c.startNodes(opts); err == nil {
			c.waitReady()
			return c
		}
		c.shutdownAll()
		c.nodes, c.proxies = nil, nil
	}
	t.Fatalf("natstest: start cluster: %v", err)
	return nil
}

// startNodes starts all nodes on freshly reserved cluster ports.
func (c *Cluster) startNodes(opts []Option) error {
	ports := freePorts(c.t, ClusterSize)
	routes := make([]string, len(ports))
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", p)
		if c.routeProxied {
			px, err := faultproxy.Listen(fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				return fmt.Errorf("route proxy for n%d: %w", i, err)
			}
			c.proxies = append(c.proxies, px)
			routes[i] = "nats://" + px.Addr()
		}
	}
	for i := range ClusterSize {
		o := nodeOptions(c.t, i, ports[i], routes)
		if c.routeProxied {
			// Gossip tells the other nodes this address, not the port.
			o.Cluster.Advertise = c.proxies[i].Addr()
		}
		for _, opt := range opts {
			opt(o)
		}
		s := &Server{t: c.t, opts: o}
		if err := s.tryStart(); err != nil {
			return err
		}
		s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
		c.nodes = append(c.nodes, s)
	}
	return nil
}

// tryStart is start returning an error that names the listener that did
// not come up, instead of failing the test.
func (s *Server) tryStart() error {
	srv, err := server.NewServer(s.opts)
	if err != nil {
		return fmt.Errorf("new server %s: %w", s.opts.ServerName, err)
	}
	srv.Start()
	if srv.ReadyForConnections(10 * time.Second) {
		s.srv = srv
		return nil
	}
	err = fmt.Errorf("server %s not ready within 10s (client listener up: %v, cluster listener on port %d up: %v)",
		s.opts.ServerName, srv.Addr() != nil, s.opts.Cluster.Port, srv.ClusterAddr() != nil)
	srv.Shutdown()
	srv.WaitForShutdown()
	return err
}

func nodeOptions(t testing.TB, i, clusterPort int, routes []string) *server.Options {
	return &server.Options{
		ServerName: fmt.Sprintf("n%d", i),
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		Cluster: server.ClusterOpts{
			Name: ClusterName,
			Host: "127.0.0.1",
			Port: clusterPort,
		},
		Routes: server.RoutesFromStr(strings.Join(routes, ",")),
	}
}

// freePorts reserves n distinct loopback ports by listening on port 0 and
// releasing them. Another process may grab one in between; that is
// acceptable for tests.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: reserve port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func (c *Cluster) shutdownAll() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(n.Shutdown)
	}
	wg.Wait()
	for _, p := range c.proxies {
		p.Close()
	}
}

// FreezeRoutes pauses (on) or resumes (off) all traffic between the
// nodes, in both directions, on every route: what is sent meanwhile is
// held and delivered in order on resuming, so the routes survive. To a
// stream leader it looks as if every follower had paused. Client
// connections are not affected. It fails the test unless the cluster was
// started by StartRouteProxiedCluster.
func (c *Cluster) FreezeRoutes(on bool) {
	c.t.Helper()
	if !c.routeProxied {
		c.t.Fatalf("natstest: FreezeRoutes on a cluster without route proxies")
	}
	for _, p := range c.proxies {
		p.Freeze(on)
	}
}

// RouteProxies returns the proxies in front of the nodes' cluster ports,
// indexed by node (nil unless started by StartRouteProxiedCluster).
func (c *Cluster) RouteProxies() []*faultproxy.Proxy {
	return append([]*faultproxy.Proxy(nil), c.proxies...)
}

// RouteConns returns the number of route connections the running nodes
// report (each connection counted once, not once per end) and the
// number of connections open through the route proxies. On a route
// proxied cluster they are equal when every route goes through a proxy.
func (c *Cluster) RouteConns() (routes, proxied int) {
	ends := 0
	for i, n := range c.nodes {
		if !c.down[i] {
			ends += n.srv.NumRoutes()
		}
	}
	for _, p := range c.proxies {
		proxied += p.Conns()
	}
	return ends / 2, proxied
}

// Nodes returns the cluster's nodes, indexed like every other method. A
// node's NATS() value changes when it is restarted. Stop and start nodes
// with Cluster.Shutdown and Cluster.Restart, not the node's own methods, so
// that the cluster knows which nodes are down and waits for rejoins.
func (c *Cluster) Nodes() []*Server { return append([]*Server(nil), c.nodes...) }

// Node returns node i.
func (c *Cluster) Node(i int) *Server { return c.nodes[c.index(i)] }

func (c *Cluster) index(i int) int {
	c.t.Helper()
	if i < 0 || i >= len(c.nodes) {
		c.t.Fatalf("natstest: node index %d out of range [0,%d)", i, len(c.nodes))
	}
	return i
}

// URLs returns the client URLs of all nodes, running or not, comma
// separated, in node order.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", n.Port())
	}
	return strings.Join(urls, ",")
}

// ConnectTo opens a client connection to node i only (servers the node
// advertises are ignored) that is closed by t.Cleanup.
func (c *Cluster) ConnectTo(i int, opts ...nats.Option) *nats.Conn {
	c.t.Helper()
	n := c.nodes[c.index(i)]
	base := []nats.Option{nats.IgnoreDiscoveredServers()}
	return Connect(c.t, fmt.Sprintf("nats://127.0.0.1:%d", n.Port()), append(base, opts...)...)
}

// Connect opens a client connection that may use any node and fails over
// between them; it is closed by t.Cleanup.
func (c *Cluster) Connect(opts ...nats.Option) *nats.Conn {
	c.t.Helper()
	return Connect(c.t, c.URLs(), opts...)
}

// JetStream opens a connection to all nodes and returns a JetStream handle
// on it.
func (c *Cluster) JetStream(opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	c.t.Helper()
	nc := c.Connect(opts...)
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// Running reports whether node i is up (not shut down via Shutdown).
func (c *Cluster) Running(i int) bool { return !c.down[c.index(i)] }

// MetaLeader returns the index of the running node that currently believes
// it is the JetStream meta leader, or -1 if none does.
func (c *Cluster) MetaLeader() int {
	for i, n := range c.nodes {
		if !c.down[i] && n.srv.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the running node that currently
// believes it leads stream (in the global account), or -1 if none does.
// The KV bucket "b" is stream "KV_b".
func (c *Cluster) StreamLeader(stream string) int {
	for i, n := range c.nodes {
		if !c.down[i] && n.srv.JetStreamIsStreamLeader(Account, stream) {
			return i
		}
	}
	return -1
}

// WaitStreamLeader waits up to timeout for stream to have a leader and
// returns its index; it fails t otherwise.
func (c *Cluster) WaitStreamLeader(t testing.TB, stream string, timeout time.Duration) int {
	t.Helper()
	leader := -1
	ok := poll(timeout, func() bool {
		leader = c.StreamLeader(stream)
		return leader >= 0
	})
	if !ok {
		t.Fatalf("natstest: stream %q has no leader after %v", stream, timeout)
	}
	return leader
}

// StepDownStream asks the current leader of stream to hand leadership to
// another replica and waits until a different node leads it; StreamLeader
// then returns the new leader (unless leadership moves again). It returns an
// error if there was no leader to ask or no other node took over within
// 30 s. A leader that wins the election again is asked again.
func (c *Cluster) StepDownStream(stream string) error {
	old := c.StreamLeader(stream)
	if old < 0 {
		return fmt.Errorf("natstest: stream %q has no leader", stream)
	}
	if err := c.nodes[old].srv.JetStreamStepdownStream(Account, stream); err != nil {
		return fmt.Errorf("natstest: step down %q on n%d: %w", stream, old, err)
	}
	asked := time.Now()
	leader := -1
	ok := poll(clusterReadyTimeout, func() bool {
		leader = c.StreamLeader(stream)
		if leader == old && time.Since(asked) > 2*time.Second {
			// Leadership came back (or never left); ask again.
			_ = c.nodes[old].srv.JetStreamStepdownStream(Account, stream)
			asked = time.Now()
		}
		return leader >= 0 && leader != old
	})
	if !ok {
		return fmt.Errorf("natstest: stream %q: no leader other than n%d after %v (last seen %d)",
			stream, old, clusterReadyTimeout, leader)
	}
	return nil
}

// Shutdown stops node i and waits for it to exit. Its ports and store stay
// reserved for Restart. Shutting down a stopped node is harmless.
func (c *Cluster) Shutdown(i int) {
	c.t.Helper()
	c.nodes[c.index(i)].Shutdown()
	c.down[i] = true
}

// Restart stops node i if it is running, starts it again with the same
// name, ports and store directory, and waits until it has rejoined: a meta
// leader is known, every running node reports itself as current with the
// meta group and the leader counts all running nodes as peers. It fails the
// test if that does not happen within 30 s.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	n := c.nodes[c.index(i)]
	n.Shutdown()
	if err := n.tryStart(); err != nil {
		c.t.Fatalf("natstest: restart n%d: %v", i, err)
	}
	c.down[i] = false
	c.waitReady()
}

// WaitForStreamCurrent waits until node i holds a replica of stream that is
// caught up with the stream's leader, and fails the test after timeout.
func (c *Cluster) WaitForStreamCurrent(t testing.TB, i int, stream string, timeout time.Duration) {
	t.Helper()
	n := c.nodes[c.index(i)]
	if !poll(timeout, func() bool { return n.srv.JetStreamIsStreamCurrent(Account, stream) }) {
		t.Fatalf("natstest: n%d replica of %q not current after %v", i, stream, timeout)
	}
}

// StreamState returns node i's local view of stream (message count, first
// and last sequence...), as read from its own store, not the leader's. The
// boolean is false if the node does not (yet) hold the stream.
func (c *Cluster) StreamState(i int, stream string) (server.StreamState, bool) {
	n := c.nodes[c.index(i)]
	if c.down[i] {
		return server.StreamState{}, false
	}
	acc, err := n.srv.JszAccount(&server.JSzOptions{Account: Account, Streams: true})
	if err != nil {
		return server.StreamState{}, false
	}
	for _, sd := range acc.Streams {
		if sd.Name == stream {
			return sd.State, true
		}
	}
	return server.StreamState{}, false
}

// waitReady fails the test unless the running nodes form a working meta
// group within clusterReadyTimeout.
func (c *Cluster) waitReady() {
	c.t.Helper()
	var last error
	ok := poll(clusterReadyTimeout, func() bool {
		last = c.readiness()
		return last == nil
	})
	if !ok {
		c.t.Fatalf("natstest: cluster not ready after %v: %v", clusterReadyTimeout, last)
	}
}

// readiness returns nil if the running nodes agree on a meta leader that
// serves JetStream API requests, or the reason they are not ready.
func (c *Cluster) readiness() error {
	leader := c.MetaLeader()
	if leader < 0 {
		return errors.New("no meta leader")
	}
	running := 0
	for i, n := range c.nodes {
		if c.down[i] {
			continue
		}
		running++
		if !n.srv.JetStreamIsCurrent() {
			return fmt.Errorf("n%d not current with the meta group", i)
		}
	}
	if peers := c.nodes[leader].srv.JetStreamClusterPeers(); len(peers) != running {
		return fmt.Errorf("meta leader n%d sees peers %v, want %d", leader, peers, running)
	}
	return c.accountInfo()
}

// accountInfo performs one JetStream account info request through a
// short-lived connection to the running nodes.
func (c *Cluster) accountInfo() error {
	var urls []string
	for i, n := range c.nodes {
		if !c.down[i] {
			urls = append(urls, n.URL())
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// poll calls cond every pollInterval until it returns true or timeout
// passes, and reports whether it returned true. cond is called at least
// once.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}
