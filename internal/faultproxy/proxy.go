// Package faultproxy is a loopback TCP proxy for tests that injects network
// faults between a client and a server: latency, silently dropped bytes in
// one or both directions, cut connections and refused connections.
//
// Every control takes effect immediately on the connections already open
// and on those opened later. Bytes are dropped in whole read chunks, so
// turning a blackhole on or off while traffic flows can cut a protocol
// message in half; a NATS server or client then closes the connection and
// the client reconnects. Toggle faults while the connection is idle when a
// test needs the connection to survive.
//
// A NATS client that dials a clustered server through the proxy learns the
// other nodes' direct addresses from the server and may fail over to them,
// bypassing the proxy; use nats.IgnoreDiscoveredServers to prevent that.
package faultproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialTimeout bounds the connection to the target for each accepted client.
const dialTimeout = 5 * time.Second

// bufSize is the largest chunk forwarded at once.
const bufSize = 32 << 10

// Proxy forwards TCP connections from a loopback listener to a target
// address while injecting faults. All methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	delay     atomic.Int64 // time.Duration applied to every chunk
	blackhole atomic.Bool  // discard bytes in both directions
	dropS2C   atomic.Bool  // discard server-to-client bytes
	refuseNew atomic.Bool  // close new connections on accept
	held      atomic.Int64 // chunks that waited out a freeze

	// freezeMu guards thaw, which is non-nil while frozen and closed on
	// unfreezing. A chunk is written under freezeMu's read lock, so that
	// once Freeze(true) returns no write is in progress.
	freezeMu sync.RWMutex
	thaw     chan struct{}

	mu     sync.Mutex
	links  map[*link]struct{}
	closed bool

	wg        sync.WaitGroup
	closeOnce sync.Once
}

// link is one proxied connection: the accepted client side and the dialed
// server side.
type link struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// New starts a proxy on 127.0.0.1 (random port) that forwards every accepted
// connection to target ("host:port"). The proxy is closed by t.Cleanup.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Listen(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// Listen is New for a caller that closes the proxy itself, when it must
// outlive (or be closed in a set order with) other test resources.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, links: make(map[*link]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as a NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// SetDelay holds every chunk, in both directions, for d before forwarding
// it, so a request/response round trip takes at least 2*d longer. Zero
// removes the delay (chunks already waiting finish their wait).
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Blackhole makes the proxy discard, in both directions, every byte it reads
// while on; connections stay open and nothing is forwarded, like a network
// partition that TCP does not notice. It is independent of
// BlackholeServerToClient: turning it off leaves that setting in force.
func (p *Proxy) Blackhole(on bool) { p.blackhole.Store(on) }

// BlackholeServerToClient discards only the bytes the server sends while on:
// the client's requests reach the server and take effect, but replies and
// acks never arrive, which makes every write ambiguous to the client.
func (p *Proxy) BlackholeServerToClient(on bool) { p.dropS2C.Store(on) }

// Freeze holds every byte, in both directions, while on, and forwards
// what it held, in order, once off: a pause of the network, not a
// partition. Nothing is dropped, so the TCP streams and the protocol
// sessions on them survive (as long as the freeze is shorter than the
// peers' own timeouts). Once Freeze(true) has returned, no byte is
// forwarded until Freeze(false). While frozen, each direction of a
// connection holds one chunk in the proxy and the rest waits in the
// kernel's socket buffers, so a sender is slowed only once those fill.
func (p *Proxy) Freeze(on bool) {
	p.freezeMu.Lock()
	defer p.freezeMu.Unlock()
	switch {
	case on && p.thaw == nil:
		p.thaw = make(chan struct{})
	case !on && p.thaw != nil:
		close(p.thaw)
		p.thaw = nil
	}
}

// HeldChunks returns how many chunks have waited out a freeze so far: a
// freeze that held nothing did not touch the traffic.
func (p *Proxy) HeldChunks() int64 { return p.held.Load() }

// RefuseNew makes the proxy accept and immediately close new connections
// while on. Open connections are unaffected.
func (p *Proxy) RefuseNew(on bool) { p.refuseNew.Store(on) }

// CutAll closes every currently open proxied connection, on both sides.
// New connections are accepted as usual afterwards.
func (p *Proxy) CutAll() {
	for _, l := range p.snapshot() {
		l.close()
	}
}

// Conns returns the number of proxied connections currently open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops accepting, closes every connection and returns once all of the
// proxy's goroutines have exited. Calling it more than once is harmless.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.ln.Close()
		p.CutAll()
		p.wg.Wait()
	})
}

func (p *Proxy) snapshot() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	return ls
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			// Closed by Close; other accept errors on loopback are not
			// worth retrying in a test.
			return
		}
		if p.refuseNew.Load() {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve dials the target for client c and pumps bytes both ways until either
// side closes or the link is cut.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	s, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		c.Close()
		return
	}
	l := &link{client: c, server: s, done: make(chan struct{})}
	if !p.register(l) {
		l.close()
		return
	}
	defer p.unregister(l)
	var pumps sync.WaitGroup
	pumps.Go(func() { p.pump(l, s, c, p.blackhole.Load) })
	pumps.Go(func() { p.pump(l, c, s, p.dropServerToClient) })
	pumps.Wait()
}

func (p *Proxy) dropServerToClient() bool {
	return p.blackhole.Load() || p.dropS2C.Load()
}

func (p *Proxy) register(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.links[l] = struct{}{}
	return true
}

func (p *Proxy) unregister(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.links, l)
}

// pump copies src to dst chunk by chunk, applying the delay and discarding
// chunks while drop is set. It closes the whole link when it stops.
func (p *Proxy) pump(l *link, dst, src net.Conn, drop func() bool) {
	defer l.close()
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.forward(l, dst, buf[:n], drop) {
			return
		}
		if err != nil {
			return
		}
	}
}

// forward waits out the configured delay and any freeze, and writes
// chunk to dst unless drop is set by then. It reports false if the link is finished.
func (p *Proxy) forward(l *link, dst net.Conn, chunk []byte, drop func() bool) bool {
	if d := time.Duration(p.delay.Load()); d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-l.done:
			timer.Stop()
			return false
		}
	}
	waited := false
	for {
		p.freezeMu.RLock()
		thaw := p.thaw
		if thaw == nil {
			var err error
			if !drop() {
				_, err = dst.Write(chunk)
			}
			p.freezeMu.RUnlock()
			return err == nil
		}
		p.freezeMu.RUnlock()
		if !waited {
			waited = true
			p.held.Add(1)
		}
		select {
		case <-thaw:
		case <-l.done:
			return false
		}
	}
}
