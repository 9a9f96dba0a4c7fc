package peers

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/natskvlease/natskvlease/dlock"
)

// victim is a contender that got the key, on a connection of its own.
type victim struct {
	at           time.Time
	awaitRenewal func() // returns right after the holder's next renewal
	kill         func() // closes its connection, releasing nothing
}

// failoverSys is one system's holder and waiter.
type failoverSys struct {
	name      string
	addWaiter func() // a new contender, on a new connection, blocked in Lock
	got       chan victim
	holder    victim
	samples   []time.Duration
}

// BenchmarkFailover: the holder's process dies at equal TTL
// (PEERS_FAILOVER_TTL, default 2s); how long from its death until the
// waiter holds (<system>-ms, the median; <system>-max-ms). The holder
// dies right after a renewal, seen by the benchmark (dlock: a watcher
// of the key sees the renewal's write; etcd: a KeepAlive channel on the
// session's lease sees the keep-alive answered), so that either way its
// last word to the server is fresh and the key lives a full TTL: the
// figure is TTL plus the time each system takes to notice the expiry
// and hand over. Death is dlock: the holder's nats.Conn closed; etcd:
// its clientv3.Client closed, the session's lease not revoked. Holder
// and waiter each have a connection of their own; a new waiter replaces
// the dead holder after each failover. One iteration is one failover on
// each system, in rotating order.
func BenchmarkFailover(b *testing.B) {
	s := startShared(b)
	ttl := envDuration(b, "PEERS_FAILOVER_TTL", 2*time.Second)
	secs := int((ttl + time.Second - 1) / time.Second)
	ctx, cancel := context.WithCancel(benchContext(b))
	var wg sync.WaitGroup
	// Cleanups run last-in first-out: this one, registered first, waits
	// for the goroutines after every connection has closed; the deferred
	// cancel ends their Lock calls as soon as the benchmark returns.
	b.Cleanup(wg.Wait)
	defer cancel()

	// dlock, with a watcher that sees the holder's renewals.
	setup := jetStream(b, connectNATS(b, s.nats.url()))
	if _, err := dlock.New(ctx, setup, dlock.WithBucket("failover"), dlock.WithTTL(ttl)); err != nil {
		b.Fatal(err) // creates the bucket
	}
	kv, err := setup.KeyValue(ctx, "failover")
	if err != nil {
		b.Fatal(err)
	}
	w, err := kv.Watch(ctx, "leader", jetstream.UpdatesOnly())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = w.Stop() })
	puts := make(chan uint64, 64)
	wg.Go(func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				select {
				case puts <- e.Revision():
				default:
				}
			}
		}
	})
	nat := &failoverSys{name: "dlock", got: make(chan victim, 4)}
	nat.addWaiter = func() {
		nc := connectNATS(b, s.nats.url())
		c, err := dlock.New(ctx, jetStream(b, nc), dlock.WithBucket("failover"), dlock.WithTTL(ttl))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close(context.Background()) })
		wg.Go(func() {
			l, err := c.Lock(ctx, "leader")
			at := time.Now()
			if err != nil {
				return
			}
			nat.got <- victim{at: at,
				awaitRenewal: func() {
					for len(puts) > 0 { // renewals seen earlier
						<-puts
					}
					limit := time.After(ttl)
					for {
						select {
						case rev := <-puts:
							if rev > l.Token() {
								return
							}
						case <-limit:
							b.Fatalf("dlock: no renewal seen within %v", ttl)
						}
					}
				},
				kill: nc.Close, // no Unlock: the key lives until its TTL
			}
		})
	}
	systems := []*failoverSys{nat}

	for _, sys := range etcdSystems {
		f := &failoverSys{name: sys, got: make(chan victim, 4)}
		f.addWaiter = func() {
			cli := connectEtcd(b, s.etcd[sys].client)
			sess, err := concurrency.NewSession(cli, concurrency.WithTTL(secs))
			if err != nil {
				b.Fatal(err)
			}
			wg.Go(func() {
				m := concurrency.NewMutex(sess, "/failover")
				err := m.Lock(ctx)
				at := time.Now()
				if err != nil {
					return
				}
				f.got <- victim{at: at,
					awaitRenewal: func() {
						ch, err := cli.KeepAlive(ctx, sess.Lease())
						if err != nil {
							b.Fatal(err)
						}
						select {
						case <-ch:
						case <-time.After(ttl):
							b.Fatalf("%s: no keep-alive seen within %v", sys, ttl)
						}
					},
					kill: func() { _ = cli.Close() },
				}
			})
		}
		systems = append(systems, f)
	}
	timeout := 5*ttl + 5*time.Second
	await := func(f *failoverSys) victim {
		select {
		case v := <-f.got:
			return v
		case <-time.After(timeout):
			b.Fatalf("%s: no waiter got the key within %v", f.name, timeout)
		}
		return victim{}
	}
	names := make([]string, len(systems))
	byName := map[string]*failoverSys{}
	for i, f := range systems {
		names[i] = f.name
		byName[f.name] = f
		f.addWaiter()
		f.holder = await(f)
		f.addWaiter()
	}
	time.Sleep(100 * time.Millisecond) // the waiters queue
	round := 0
	for b.Loop() {
		rotate(round, names, func(name string) {
			f := byName[name]
			f.holder.awaitRenewal()
			killed := time.Now()
			f.holder.kill()
			next := await(f)
			f.samples = append(f.samples, next.at.Sub(killed))
			f.holder = next
			f.addWaiter()
			time.Sleep(100 * time.Millisecond)
		})
		round++
	}
	for _, f := range systems {
		b.ReportMetric(millis(percentile(f.samples, 50)), f.name+"-ms")
		b.ReportMetric(millis(percentile(f.samples, 100)), f.name+"-max-ms")
	}
	b.ReportMetric(millis(ttl), "ttl-ms")
}
