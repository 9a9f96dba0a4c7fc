package natskvlease_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

// topology opens a new client connection and a JetStream handle that
// reaches the bucket's JetStream (through a domain, an API prefix...).
type topology func(t *testing.T) (*nats.Conn, jetstream.JetStream)

func TestHubLeafDomain(t *testing.T) {
	for _, leafJS := range []bool{true, false} {
		t.Run(fmt.Sprintf("leafJetStream=%v", leafJS), func(t *testing.T) {
			hl := natstest.StartHubLeaf(t, leafJS)
			exerciseTopology(t, func(t *testing.T) (*nats.Conn, jetstream.JetStream) {
				nc := hl.Leaf.Connect()
				js, err := jetstream.NewWithDomain(nc, natstest.HubDomain)
				if err != nil {
					t.Fatal(err)
				}
				return nc, js
			})
		})
	}
}

// AccountsConf: account A has JetStream and exports its API, its KV
// subjects, flow control and the deliveries to B's inboxes; account B
// imports them under the API prefix JS.A.API, as nats.go expects of a
// KeyValue reached with jetstream.NewWithAPIPrefix (writes go to
// JS.A.API.$KV.<bucket>.<key>).
const accountsConf = `
jetstream: {store_dir: "STORE_DIR"}
accounts: {
  A: {
    jetstream: enabled
    users: [{user: a, password: a}]
    exports: [
      {service: "$JS.API.>"}
      {service: "$KV.>"}
      {service: "$JS.FC.>"}
      {stream: "_INBOX_B.>"}
    ]
  }
  B: {
    users: [{user: b, password: b}]
    imports: [
      {service: {account: A, subject: "$JS.API.>"}, to: "JS.A.API.>"}
      {service: {account: A, subject: "$KV.>"}, to: "JS.A.API.$KV.>"}
      {service: {account: A, subject: "$JS.FC.>"}}
      {stream: {account: A, subject: "_INBOX_B.>"}}
    ]
  }
}
`

func TestAccountImportAPIPrefix(t *testing.T) {
	srv := natstest.StartConfig(t, accountsConf)
	exerciseTopology(t, func(t *testing.T) (*nats.Conn, jetstream.JetStream) {
		nc := srv.Connect(nats.UserInfo("b", "b"), nats.CustomInboxPrefix("_INBOX_B"))
		js, err := jetstream.NewWithAPIPrefix(nc, "JS.A.API")
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	})
}

// exerciseTopology runs acquire, renew, release, a dead holder's expiry,
// watch-driven handoffs, dlock and leadelect through connections that
// open gives.
func exerciseTopology(t *testing.T, open topology) {
	ctx := natstest.Context(t)
	_, js1 := open(t)
	_, js2 := open(t)
	const bucket, ttl = "topo", 2 * time.Second
	kv1, err := natskvlease.NewKVHelper(js1, nil).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{Bucket: bucket, TTL: ttl})
	if err != nil {
		t.Fatalf("OpenLeaseBucket: %v", err)
	}
	kv2, err := natskvlease.NewKVHelper(js2, nil).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{Bucket: bucket, TTL: ttl})
	if err != nil {
		t.Fatalf("OpenLeaseBucket (second client): %v", err)
	}

	t.Run("acquire renew release", func(t *testing.T) {
		a := natskvlease.NewLease(kv1, natskvlease.LeaseConfig{Key: "arr", Value: []byte("a"), TTL: ttl})
		b := natskvlease.NewLease(kv2, natskvlease.LeaseConfig{Key: "arr", Value: []byte("b"), TTL: ttl})
		if ok, err := a.Acquire(ctx); !ok || err != nil {
			t.Fatalf("Acquire = %v, %v", ok, err)
		}
		if ok, err := b.Acquire(ctx); ok || err != nil {
			t.Fatalf("second Acquire = %v, %v; want false, nil", ok, err)
		}
		if ok, err := a.Renew(ctx); !ok || err != nil {
			t.Fatalf("Renew = %v, %v", ok, err)
		}
		if a.TTL() != ttl || a.ServerExpiry() != ttl {
			t.Fatalf("TTL %v, ServerExpiry %v; want %v (per-message TTLs)", a.TTL(), a.ServerExpiry(), ttl)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if ok, err := b.Acquire(ctx); !ok || err != nil {
			t.Fatalf("Acquire after release = %v, %v", ok, err)
		}
		_ = b.Release(ctx)
	})

	t.Run("dead holder expires", func(t *testing.T) {
		nc3, js3 := open(t)
		kv3, err := natskvlease.NewKVHelper(js3, nil).OpenLeaseBucket(ctx, natskvlease.LeaseBucketConfig{Bucket: bucket, TTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		dead := natskvlease.NewLease(kv3, natskvlease.LeaseConfig{Key: "dead", Value: []byte("dead"), TTL: time.Second})
		if ok, err := dead.Acquire(ctx); !ok || err != nil {
			t.Fatalf("Acquire = %v, %v", ok, err)
		}
		nc3.Close()
		closed := time.Now()
		w := natskvlease.NewLease(kv1, natskvlease.LeaseConfig{Key: "dead", Value: []byte("w"), TTL: ttl})
		if err := w.AcquireWait(ctx); err != nil {
			t.Fatalf("AcquireWait: %v", err)
		}
		took := time.Since(closed)
		t.Logf("failover after the holder's connection closed: %v (TTL 1s)", took.Round(time.Millisecond))
		// The contract: the server expires the key one TTL after the
		// last write; the marker wakes the waiter. Slack for 2 loaded cores.
		if took > time.Second+2*time.Second {
			t.Fatalf("failover took %v, TTL 1s", took)
		}
		_ = w.Release(ctx)
	})

	t.Run("watch-driven handoff", func(t *testing.T) {
		leases := []*natskvlease.Lease{
			natskvlease.NewLease(kv1, natskvlease.LeaseConfig{Key: "handoff", Value: []byte("1"), TTL: ttl}),
			natskvlease.NewLease(kv2, natskvlease.LeaseConfig{Key: "handoff", Value: []byte("2"), TTL: ttl}),
		}
		if ok, err := leases[0].Acquire(ctx); !ok || err != nil {
			t.Fatalf("Acquire = %v, %v", ok, err)
		}
		const n = 50
		var took []time.Duration
		for i := range n {
			holder, waiter := leases[i%2], leases[(i+1)%2]
			got := make(chan error, 1)
			go func() { got <- waiter.AcquireWait(ctx) }()
			// The waiter is watching once its lease has read the key.
			natstest.Eventually(t, 5*time.Second, "the waiter to see the holder", func() bool { return waiter.Revision() >= holder.Revision() })
			start := time.Now()
			if err := holder.Release(ctx); err != nil {
				t.Fatalf("Release: %v", err)
			}
			if err := <-got; err != nil {
				t.Fatalf("AcquireWait: %v", err)
			}
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		t.Logf("handoff p50 %v, p90 %v, max %v over %d handoffs", took[n/2], took[n*9/10], took[n-1], n)
		_ = leases[n%2].Release(ctx)
	})

	t.Run("dlock", func(t *testing.T) {
		c1, err := dlock.New(ctx, js1, dlock.WithBucket("topolocks"), dlock.WithTTL(time.Second))
		if err != nil {
			t.Fatalf("dlock.New: %v", err)
		}
		defer c1.Close(ctx)
		c2, err := dlock.New(ctx, js2, dlock.WithBucket("topolocks"), dlock.WithTTL(3*time.Second))
		if err != nil {
			t.Fatalf("dlock.New with another TTL: %v", err)
		}
		defer c2.Close(ctx)
		l1, err := c1.TryLock(ctx, "job")
		if err != nil {
			t.Fatalf("TryLock: %v", err)
		}
		if _, err := c2.TryLock(ctx, "job"); !errors.Is(err, dlock.ErrLocked) {
			t.Fatalf("second TryLock: %v, want ErrLocked", err)
		}
		h, err := dlock.ReadHolder(ctx, js2, "topolocks", "job")
		if err != nil || h.Token != l1.Token() || h.TTL != time.Second {
			t.Fatalf("ReadHolder = %+v, %v; want token %d, TTL 1s", h, err, l1.Token())
		}
		got := make(chan error, 1)
		go func() {
			l2, err := c2.Lock(ctx, "job")
			if err == nil {
				err = l2.Unlock(ctx)
			}
			got <- err
		}()
		if err := l1.Unlock(ctx); err != nil {
			t.Fatalf("Unlock: %v", err)
		}
		if err := <-got; err != nil {
			t.Fatalf("Lock after Unlock: %v", err)
		}
	})

	t.Run("leadelect", func(t *testing.T) {
		var mu sync.Mutex
		var leaders []string
		started := make(chan string, 4)
		run := func(js jetstream.JetStream, id string) (context.CancelFunc, chan error) {
			e, err := leadelect.New(js, leadelect.Config{Bucket: "topoelect", Key: "sched", ID: id, TTL: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- e.Run(rctx, leadelect.Callbacks{OnStartedLeading: func(lctx context.Context) {
					mu.Lock()
					leaders = append(leaders, id)
					mu.Unlock()
					started <- id
					<-lctx.Done()
				}})
			}()
			return cancel, done
		}
		cancel1, done1 := run(js1, "one")
		first := <-started
		cancel2, done2 := run(js2, "two")
		if first != "one" {
			t.Fatalf("first leader %q", first)
		}
		cancel1()
		if next := <-started; next != "two" {
			t.Fatalf("after one resigned, leader %q", next)
		}
		if err := <-done1; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
		cancel2()
		<-done2
		obs, err := leadelect.NewObserver(js2, leadelect.ObserverConfig{Bucket: "topoelect", Key: "sched"})
		if err != nil {
			t.Fatal(err)
		}
		natstest.Eventually(t, 5*time.Second, "no leader", func() bool {
			_, err := obs.Leader(ctx)
			return errors.Is(err, leadelect.ErrNoLeader)
		})
	})
}
