package natstest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	bucket = "b"
	stream = "KV_b"
	// wait bounds every retry loop in these tests; elections take seconds.
	wait = 30 * time.Second
)

func TestClusterFailover(t *testing.T) {
	start := time.Now()
	c := natstest.StartCluster(t)
	t.Logf("cluster ready after %v", time.Since(start))

	_, js := c.JetStream()
	kv := createBucket(t, js)
	putEventually(t, kv, "k", "v0")

	leader := c.WaitStreamLeader(t, stream, wait)
	t.Logf("stream leader n%d", leader)

	start = time.Now()
	if err := c.StepDownStream(stream); err != nil {
		t.Fatal(err)
	}
	next := c.StreamLeader(stream)
	t.Logf("step down n%d -> n%d took %v", leader, next, time.Since(start))
	if next == leader || next < 0 {
		t.Fatalf("leader after step down = %d, was %d", next, leader)
	}

	start = time.Now()
	c.Shutdown(next)
	newLeader := c.WaitStreamLeader(t, stream, wait)
	t.Logf("shutdown of leader n%d -> n%d leads after %v", next, newLeader, time.Since(start))
	if newLeader == next {
		t.Fatalf("stopped node n%d still reported as leader", next)
	}
	putEventually(t, kv, "k", "v1")
	t.Logf("write accepted %v after leader shutdown", time.Since(start))

	start = time.Now()
	c.Restart(next)
	c.WaitForStreamCurrent(t, next, stream, wait)
	t.Logf("restart of n%d rejoined and caught up after %v", next, time.Since(start))
	waitLocalLastSeq(t, c, next, 2)
}

func TestClusterConnectToAndURLs(t *testing.T) {
	c := natstest.StartCluster(t)
	if got := len(c.Nodes()); got != natstest.ClusterSize {
		t.Fatalf("Nodes() = %d, want %d", got, natstest.ClusterSize)
	}
	for i, n := range c.Nodes() {
		nc := c.ConnectTo(i)
		if got, want := nc.ConnectedUrl(), fmt.Sprintf("nats://127.0.0.1:%d", n.Port()); got != want {
			t.Errorf("ConnectTo(%d) connected to %s, want %s", i, got, want)
		}
		if name := nc.ConnectedServerName(); name != fmt.Sprintf("n%d", i) {
			t.Errorf("ConnectTo(%d) reached server %q", i, name)
		}
	}
	if ml := c.MetaLeader(); ml < 0 {
		t.Fatalf("no meta leader on a ready cluster")
	}
}

func TestServerRestartKeepsFileStore(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("kept")); err != nil {
		t.Fatalf("put: %v", err)
	}
	port := s.Port()
	s.Restart()
	if s.Port() != port {
		t.Fatalf("port changed across restart: %d -> %d", port, s.Port())
	}
	_, js = s.JetStream()
	kv, err = js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("bucket after restart: %v", err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if string(e.Value()) != "kept" {
		t.Fatalf("value after restart = %q", e.Value())
	}
}

func createBucket(t *testing.T, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket, Replicas: 3, Storage: jetstream.MemoryStorage,
	})
	if err != nil {
		t.Fatalf("create R3 bucket: %v", err)
	}
	return kv
}

// putEventually retries a put until it is acknowledged: during an election
// requests time out or find no responders.
func putEventually(t *testing.T, kv jetstream.KeyValue, key, val string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = kv.Put(ctx, key, []byte(val))
		cancel()
		if err == nil {
			return
		}
		if !retryable(err) {
			break
		}
	}
	t.Fatalf("put %s=%s: %v", key, val, err)
}

func retryable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrStreamNotFound) ||
		isAPIError(err)
}

func isAPIError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr)
}

// waitLocalLastSeq waits until node i's own copy of the stream has reached
// seq, which proves the restarted replica caught up on writes it missed.
func waitLocalLastSeq(t *testing.T, c *natstest.Cluster, i int, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		st, ok := c.StreamState(i, stream)
		if ok && st.LastSeq >= seq {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d last seq = %d (present %v), want >= %d", i, st.LastSeq, ok, seq)
		}
		<-tick.C
	}
}

// TestRouteProxiedClusterFreeze shows that the route proxies carry every
// route, and that freezing them holds a replicated write (no quorum, no
// ack) without breaking the routes or moving the stream's leadership: the
// write is acknowledged once the routes resume.
func TestRouteProxiedClusterFreeze(t *testing.T) {
	c := natstest.StartRouteProxiedCluster(t)
	_, js := c.JetStream()
	createBucket(t, js)
	leader := c.WaitStreamLeader(t, stream, wait)
	for i := range natstest.ClusterSize {
		c.WaitForStreamCurrent(t, i, stream, wait)
	}
	// A route being set up or torn down can show for a moment on one
	// side only: compare once the counts have settled.
	var routes, proxied int
	settled := func() bool { routes, proxied = c.RouteConns(); return routes > 0 && proxied == routes }
	natstest.Eventually(t, 5*time.Second, "every route through a proxy", settled)
	t.Logf("route connections: %d, through the proxies: %d", routes, proxied)

	// Revision-checked writes, as a lease writes, from a client of the
	// leader's node (not frozen).
	nc := c.ConnectTo(leader)
	ljs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	write := func(ctx context.Context, last uint64) (uint64, error) {
		m := &nats.Msg{Subject: "$KV." + bucket + ".k", Data: []byte("v"), Header: nats.Header{}}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, fmt.Sprint(last))
		ack, err := ljs.PublishMsg(ctx, m)
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
	first, err := write(ctx, 0)
	if err != nil {
		t.Fatalf("write before freezing: %v", err)
	}

	held := func() (n int64) {
		for _, p := range c.RouteProxies() {
			n += p.HeldChunks()
		}
		return n
	}
	heldBefore := held()
	const freeze = 500 * time.Millisecond
	c.FreezeRoutes(true)
	frozenAt := time.Now()
	acked := make(chan error, 1)
	go func() {
		_, err := write(ctx, first)
		acked <- err
	}()
	select {
	case err := <-acked:
		c.FreezeRoutes(false)
		t.Fatalf("write answered while the routes were frozen (err %v)", err)
	case <-time.After(freeze):
	}
	c.FreezeRoutes(false)
	if err := <-acked; err != nil {
		t.Fatalf("write after resuming: %v", err)
	}
	took := time.Since(frozenAt)
	if held() == heldBefore {
		t.Fatalf("the freeze held no route traffic")
	}
	if got := c.StreamLeader(stream); got != leader {
		t.Fatalf("stream leader moved from n%d to n%d across a %v freeze", leader, got, freeze)
	}
	before := routes
	natstest.Eventually(t, 5*time.Second, "the same routes after the freeze", func() bool { return settled() && routes == before })
	t.Logf("write acknowledged %v after a %v freeze; leader n%d throughout", took.Round(time.Millisecond), freeze, leader)
}
