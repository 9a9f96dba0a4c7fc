package faulttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/faultproxy"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

const (
	defaultRun = 4 * time.Second
	contenders = 4
	minFaults  = 2
)

// setupCtx bounds set-up calls.
func setupCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// clusterScenario starts a cluster with an R3 bucket and a scenario whose
// observer reads from any node.
func clusterScenario(t *testing.T, name string) (*natstest.Cluster, *scenario) {
	c := natstest.StartCluster(t)
	ctx := setupCtx(t)
	bucket := newBucketName(name)
	_, js := c.JetStream()
	createBucket(t, ctx, js, bucket, 3, false)
	return c, newScenario(t, name, bucket, c.Connect())
}

// addDirect adds contenders connected to every node, failing over.
func addDirect(t *testing.T, c *natstest.Cluster, s *scenario) {
	ctx := setupCtx(t)
	for range contenders {
		_, js := c.JetStream()
		s.addContender(openKV(t, ctx, js, s.bucket), nil)
	}
}

// addProxied adds contenders each connected through its own fault proxy
// to one node, ignoring the other nodes.
func addProxied(t *testing.T, c *natstest.Cluster, s *scenario) {
	ctx := setupCtx(t)
	for i := range contenders {
		p := faultproxy.New(t, fmt.Sprintf("127.0.0.1:%d", c.Node(i%natstest.ClusterSize).Port()))
		nc := natstest.Connect(t, p.URL(), nats.IgnoreDiscoveredServers())
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		s.addContender(openKV(t, ctx, js, s.bucket), p)
	}
}

// paceFaults sets faultDue every interval, unless a fault is in progress,
// until the run time has passed and at least minFaults faults were
// injected and checked (or a hard cap passes).
func paceFaults(t *testing.T, s *scenario, interval time.Duration) {
	run := runFor(t, defaultRun)
	deadline := time.Now().Add(run)
	hardCap := deadline.Add(60 * time.Second)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for time.Now().Before(deadline) || s.completed.Load() < minFaults {
		if time.Now().After(hardCap) {
			t.Errorf("only %d faults checked within %v", s.completed.Load(), run+60*time.Second)
			return
		}
		<-tick.C
		if !s.inFault.Load() {
			s.faultDue.Store(true)
		}
	}
}

// waitDone waits for done up to timeout.
func waitDone(done <-chan struct{}, timeout time.Duration) bool {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case <-done:
		return true
	case <-tm.C:
		return false
	}
}

func TestStreamLeaderStepDown(t *testing.T) {
	c, s := clusterScenario(t, "stepdown")
	addDirect(t, c, s)
	s.start()
	stream := "KV_" + s.bucket
	deadline := time.Now().Add(runFor(t, defaultRun))
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		<-tick.C
		if err := c.StepDownStream(stream); err != nil {
			t.Logf("step down: %v", err)
			continue
		}
		s.st.faults.Add(1)
	}
	s.finish()
}

func TestStreamLeaderNodeRestart(t *testing.T) {
	c, s := clusterScenario(t, "leader-restart")
	addDirect(t, c, s)
	s.start()
	stream := "KV_" + s.bucket
	s.waitHandoffs(t, 3, "before any fault")
	deadline := time.Now().Add(runFor(t, defaultRun))
	for s.st.faults.Load() == 0 || time.Now().Before(deadline) {
		i := c.WaitStreamLeader(t, stream, 30*time.Second)
		c.Shutdown(i)
		s.st.faults.Add(1)
		c.WaitStreamLeader(t, stream, 30*time.Second)
		// Let the contenders hand off on two nodes for a while.
		s.waitHandoffs(t, 3, "with node %d down", i)
		c.Restart(i)
		c.WaitForStreamCurrent(t, i, stream, 30*time.Second)
		s.waitHandoffs(t, 3, "after node %d restarted", i)
	}
	s.finish()
}

// TestHolderBlackholed cuts the holder off in both directions: it must
// report the loss (Done closed, IsHeld false) by its safety deadline,
// before anyone else acquires (which the checker verifies).
func TestHolderBlackholed(t *testing.T) {
	c, s := clusterScenario(t, "holder-blackholed")
	addProxied(t, c, s)
	s.hook = func(h *contender) bool {
		if !s.claimFault() {
			return true
		}
		defer s.faultDone()
		p := h.extra.(*faultproxy.Proxy)
		p.Blackhole(true)
		defer p.Blackhole(false)
		s.st.faults.Add(1)
		cut := time.Now()
		// Keep trying to renew, as a live holder would, until the loss.
		if h.hold(leaseTTL+3*time.Second) && s.ctx.Err() == nil {
			t.Errorf("%s: black-holed holder still holds %v after the cut", h.name, time.Since(cut))
			return true
		}
		if s.ctx.Err() != nil {
			return false // the scenario ended during the fault
		}
		if h.lease.IsHeld() {
			t.Errorf("%s: Done closed but IsHeld is true", h.name)
		}
		// Another holder takes over after the server expires the key.
		if !waitUntil(2*leaseTTL+5*time.Second, func() bool { return s.otherBeganAfter(h.name, cut) || s.ctx.Err() != nil }) {
			t.Errorf("no takeover within %v of black-holing %s", 2*leaseTTL+5*time.Second, h.name)
		}
		return false
	}
	s.start()
	paceFaults(t, s, 500*time.Millisecond)
	s.finish()
}

// TestAcksBlackholed drops the server's answers during a renewal: the
// write is applied but its acknowledgement lost. The holder must adopt its
// own write (once answers flow again) or report the loss; never two
// holders.
func TestAcksBlackholed(t *testing.T) {
	c, s := clusterScenario(t, "acks-blackholed")
	addProxied(t, c, s)
	s.hook = func(h *contender) bool {
		if !s.claimFault() {
			return true
		}
		defer s.faultDone()
		p := h.extra.(*faultproxy.Proxy)
		n := s.st.faults.Add(1)
		p.BlackholeServerToClient(true)
		res := make(chan bool, 1)
		go func() {
			ok, _ := h.lease.Renew(s.ctx)
			res <- ok
		}()
		var ok bool
		if n%2 == 1 { // answers come back before the deadline: adopt
			lift := time.NewTimer(400 * time.Millisecond)
			select {
			case ok = <-res:
				lift.Stop()
			case <-lift.C:
				p.BlackholeServerToClient(false)
				ok = <-res
			}
		} else { // answers lost until the deadline: loss
			ok = <-res
		}
		p.BlackholeServerToClient(false)
		if s.ctx.Err() != nil {
			return false // the scenario ended during the fault
		}
		switch {
		case ok && !h.lease.IsHeld():
			// Adopted, then lapsed before we looked: allowed, rare.
		case ok:
			s.st.adopted.Add(1)
			if owner, known := s.leaderOwner(); known && string(owner) != string(h.value) {
				t.Errorf("%s adopted a renewal but the leader shows %q", h.name, owner)
			}
		case h.lease.IsHeld():
			t.Errorf("%s: Renew reported loss but IsHeld is true", h.name)
		}
		return true
	}
	s.start()
	paceFaults(t, s, 500*time.Millisecond)
	s.finish()
}

// TestHolderPaused stops a holder's renewals (it neither renews nor looks)
// for longer than its TTL. By its own clock it must stop believing at its
// deadline; nobody else may acquire before that deadline.
func TestHolderPaused(t *testing.T) {
	c, s := clusterScenario(t, "holder-paused")
	addDirect(t, c, s)
	s.hook = func(h *contender) bool {
		if !s.claimFault() {
			return true
		}
		defer s.faultDone()
		s.st.faults.Add(1)
		dl := h.lease.Deadline()
		if dl.IsZero() {
			return true
		}
		if d := time.Until(dl); d > leaseTTL {
			t.Errorf("%s: deadline %v away, beyond the TTL %v", h.name, d, leaseTTL)
		}
		paused := time.Now()
		// The pause: no renewal, no look at the lease, past TTL.
		if waitDone(s.ctx.Done(), time.Until(dl)+leaseTTL/2) {
			return false // the scenario ended during the pause
		}
		if h.lease.IsHeld() {
			t.Errorf("%s: still IsHeld after its deadline", h.name)
		}
		// Its belief ended at its deadline (the Done watcher may have
		// recorded that already, a moment later).
		h.iv.EndAt(dl)
		if !waitUntil(2*leaseTTL+5*time.Second, func() bool { return s.otherBeganAfter(h.name, paused) || s.ctx.Err() != nil }) {
			t.Errorf("no takeover within %v of pausing %s", 2*leaseTTL+5*time.Second, h.name)
		}
		return false
	}
	s.start()
	paceFaults(t, s, 500*time.Millisecond)
	s.finish()
}

// TestSingleNodeFileRestart restarts a whole single-node server with a
// file-storage bucket: holdings survive or are lost cleanly, and tokens
// never go backwards.
func TestSingleNodeFileRestart(t *testing.T) {
	srv := natstest.Start(t)
	ctx := setupCtx(t)
	bucket := newBucketName("file-restart")
	_, js := srv.JetStream()
	createBucket(t, ctx, js, bucket, 1, true)
	s := newScenario(t, "single-node-file-restart", bucket, srv.Connect())
	for range contenders - 1 {
		_, js := srv.JetStream()
		s.addContender(openKV(t, ctx, js, bucket), nil)
	}
	s.start()
	deadline := time.Now().Add(runFor(t, defaultRun))
	tick := time.NewTicker(1200 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) || s.st.faults.Load() < minFaults {
		<-tick.C
		srv.Restart()
		s.st.faults.Add(1)
	}
	s.finish()
}
