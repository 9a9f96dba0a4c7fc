package peers

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/leadelect"
)

// handoffTimeout fails a handoff that takes longer: something is broken.
const handoffTimeout = 15 * time.Second

// holding is a contender that got the key: when its Lock (Campaign,
// OnStartedLeading) returned, and how it lets go.
type holding struct {
	id      int
	release func(context.Context) error
	at      time.Time
}

// crowd is one system's contenders for one key: n+1 goroutines, each
// taking the key, handing it to the harness on got, and once released
// waiting for rejoin before queueing again (so that the one that just
// let go does not race with the handoff being measured).
type crowd struct {
	name   string
	got    chan holding
	rejoin []chan struct{}
	settle time.Duration
	holder holding
	wg     sync.WaitGroup
	cancel context.CancelFunc

	handoffs []time.Duration
}

// contend is one contender's attempt: block until it holds the key. It
// returns when it began to hold, or the zero time for "on return".
type contend func(ctx context.Context) (release func(context.Context) error, at time.Time, err error)

// newCrowd starts contenders[0], waits until it holds the key, then
// starts the others and lets them settle.
func newCrowd(b *testing.B, name string, contenders []contend, settle time.Duration) *crowd {
	ctx, cancel := context.WithCancel(context.Background())
	c := &crowd{name: name, got: make(chan holding, len(contenders)+1), settle: settle, cancel: cancel}
	// Registered after the clients the contenders use: cleanups run
	// last-in first-out, so the goroutines end before those close.
	b.Cleanup(func() { cancel(); c.wg.Wait() })
	for i, try := range contenders {
		rejoin := make(chan struct{}, 1)
		c.rejoin = append(c.rejoin, rejoin)
		c.wg.Go(func() {
			for {
				release, at, err := try(ctx)
				if at.IsZero() {
					at = time.Now()
				}
				if err != nil {
					return // the benchmark ended
				}
				c.got <- holding{id: i, release: release, at: at}
				select {
				case <-rejoin:
				case <-ctx.Done():
					return
				}
			}
		})
		if i == 0 {
			c.holder = c.await(b)
		}
	}
	time.Sleep(c.settle + time.Duration(len(contenders))*time.Millisecond)
	select {
	case g := <-c.got:
		b.Fatalf("%s: contender %d got the key while %d held it", name, g.id, c.holder.id)
	default:
	}
	return c
}

func (c *crowd) await(b *testing.B) holding {
	select {
	case g := <-c.got:
		return g
	case <-time.After(handoffTimeout):
		b.Fatalf("%s: no contender got the key within %v", c.name, handoffTimeout)
	}
	return holding{}
}

// handoff releases the key and waits for the next holder; the released
// contender then queues again, and the crowd settles.
func (c *crowd) handoff(b *testing.B, ctx context.Context) {
	start := time.Now()
	if err := c.holder.release(ctx); err != nil {
		b.Fatalf("%s: release: %v", c.name, err)
	}
	next := c.await(b)
	c.handoffs = append(c.handoffs, next.at.Sub(start))
	c.rejoin[c.holder.id] <- struct{}{}
	c.holder = next
	time.Sleep(c.settle)
}

func (c *crowd) report(b *testing.B) {
	b.ReportMetric(micros(percentile(c.handoffs, 50)), c.name+"-p50-µs")
	b.ReportMetric(micros(percentile(c.handoffs, 99)), c.name+"-p99-µs")
}

// runCrowds measures one handoff per crowd per iteration, in an order
// that rotates.
func runCrowds(b *testing.B, crowds []*crowd) {
	ctx := benchContext(b)
	names := make([]string, len(crowds))
	byName := map[string]*crowd{}
	for i, c := range crowds {
		names[i] = c.name
		byName[c.name] = c
	}
	round := 0
	for b.Loop() {
		rotate(round, names, func(name string) { byName[name].handoff(b, ctx) })
		round++
	}
	for _, c := range crowds {
		c.report(b)
	}
}

// settleFor is the pause after each handoff for the released contender
// to queue again.
func settleFor(contenders int) time.Duration {
	if contenders > 50 {
		return 40 * time.Millisecond
	}
	return 20 * time.Millisecond
}

// BenchmarkHandoff: the holder unlocks; how long from its Unlock call
// until the next holder's Lock returns, p50 and p99 (<system>-p50-µs,
// <system>-p99-µs). One iteration is one handoff on each system, in
// rotating order; ns/op includes the pauses between handoffs and means
// little.
//
// Sub-benchmarks: waiters=N gives each of the N waiters (and the holder)
// a connection of its own, as N processes would have (dlock: a nats.Conn
// and Client each; etcd: a clientv3.Client and Session each);
// waiters=N/conns=K puts them on K connections (dlock: K Clients; etcd:
// K clients, a Session per waiter, since a Mutex is keyed by its
// session's lease). PEERS_WAITERS (default 1,10,100) and
// PEERS_SHARED_WAITERS (default 100, on PEERS_SHARED_CONNS = 4) size
// them.
func BenchmarkHandoff(b *testing.B) {
	s := startShared(b)
	conns := envInts(b, "PEERS_SHARED_CONNS", []int{4})[0]
	type shape struct{ waiters, conns int }
	var shapes []shape
	for _, n := range envInts(b, "PEERS_WAITERS", []int{1, 10, 100}) {
		shapes = append(shapes, shape{n, n + 1})
	}
	for _, n := range envInts(b, "PEERS_SHARED_WAITERS", []int{100}) {
		shapes = append(shapes, shape{n, conns})
	}
	for k, sh := range shapes {
		name := fmt.Sprintf("waiters=%d", sh.waiters)
		if sh.conns <= sh.waiters {
			name += fmt.Sprintf("/conns=%d", sh.conns)
		}
		b.Run(name, func(b *testing.B) {
			n := sh.waiters + 1
			bucket := fmt.Sprintf("handoff_%d", k)
			crowds := []*crowd{newCrowd(b, "dlock", dlockContenders(b, s, bucket, n, sh.conns), settleFor(n))}
			for _, sys := range etcdSystems {
				crowds = append(crowds, newCrowd(b, sys, etcdMutexContenders(b, s, sys, "/"+bucket, n, sh.conns), settleFor(n)))
			}
			runCrowds(b, crowds)
		})
	}
}

// dlockContenders returns n Lock calls on one key through conns
// Clients, each on a connection of its own.
func dlockContenders(b *testing.B, s *servers, bucket string, n, conns int) []contend {
	ctx := benchContext(b)
	var clients []*dlock.Client
	for range min(n, conns) {
		c, err := dlock.New(ctx, jetStream(b, connectNATS(b, s.nats.url())), dlock.WithBucket(bucket), dlock.WithTTL(cycleTTL))
		if err != nil {
			b.Fatalf("dlock.New: %v", err)
		}
		b.Cleanup(func() { _ = c.Close(context.Background()) })
		clients = append(clients, c)
	}
	out := make([]contend, n)
	for i := range out {
		c := clients[i%len(clients)]
		out[i] = func(ctx context.Context) (func(context.Context) error, time.Time, error) {
			l, err := c.Lock(ctx, "leader")
			if err != nil {
				return nil, time.Time{}, err
			}
			return l.Unlock, time.Time{}, nil
		}
	}
	return out
}

// etcdClients opens k clients on the etcd of sys.
func etcdClients(b *testing.B, s *servers, sys string, k int) []*clientv3.Client {
	out := make([]*clientv3.Client, k)
	for i := range out {
		out[i] = connectEtcd(b, s.etcd[sys].client)
	}
	return out
}

// etcdSessions opens n sessions on conns clients (session i on client
// i mod conns).
func etcdSessions(b *testing.B, s *servers, sys string, n, conns int) []*concurrency.Session {
	clients := etcdClients(b, s, sys, min(n, conns))
	out := make([]*concurrency.Session, n)
	for i := range out {
		sess, err := concurrency.NewSession(clients[i%len(clients)], concurrency.WithTTL(int(cycleTTL/time.Second)))
		if err != nil {
			b.Fatalf("%s session: %v", sys, err)
		}
		b.Cleanup(func() { _ = sess.Close() })
		out[i] = sess
	}
	return out
}

// etcdMutexContenders returns n concurrency.Mutex Lock calls on pfx,
// each on a session of its own, over conns clients.
func etcdMutexContenders(b *testing.B, s *servers, sys, pfx string, n, conns int) []contend {
	out := make([]contend, n)
	for i, sess := range etcdSessions(b, s, sys, n, conns) {
		out[i] = func(ctx context.Context) (func(context.Context) error, time.Time, error) {
			m := concurrency.NewMutex(sess, pfx)
			if err := m.Lock(ctx); err != nil {
				return nil, time.Time{}, err
			}
			return m.Unlock, time.Time{}, nil
		}
	}
	return out
}

// BenchmarkElection: the leader resigns; how long from its Resign call
// until the next leader starts (leadelect: OnStartedLeading is called;
// etcd: concurrency.Election.Campaign returns), p50 and p99. Every
// candidate has a connection of its own (etcd: a client and session
// each). candidates=N is N candidates waiting besides the leader;
// PEERS_CANDIDATES (default 1,10) sets them. A resigned leadelect
// candidate campaigns again by itself once it sees the new leader; an
// etcd one calls Campaign again after the handoff.
func BenchmarkElection(b *testing.B) {
	s := startShared(b)
	for k, waiting := range envInts(b, "PEERS_CANDIDATES", []int{1, 10}) {
		b.Run(fmt.Sprintf("candidates=%d", waiting), func(b *testing.B) {
			n := waiting + 1
			key := fmt.Sprintf("election_%d", k)
			crowds := []*crowd{newCrowd(b, "leadelect", leadelectContenders(b, s, key, n), settleFor(n))}
			for _, sys := range etcdSystems {
				var cs []contend
				for _, sess := range etcdSessions(b, s, sys, n, n) {
					cs = append(cs, func(ctx context.Context) (func(context.Context) error, time.Time, error) {
						e := concurrency.NewElection(sess, "/"+key)
						if err := e.Campaign(ctx, "candidate"); err != nil {
							return nil, time.Time{}, err
						}
						return e.Resign, time.Time{}, nil
					})
				}
				crowds = append(crowds, newCrowd(b, sys, cs, settleFor(n)))
			}
			runCrowds(b, crowds)
		})
	}
}

// leadelectContenders returns n candidates, each with its Election on a
// connection of its own. The first call of each starts Run, which
// campaigns for as long as the benchmark lasts; each later call waits
// for its next term.
func leadelectContenders(b *testing.B, s *servers, key string, n int) []contend {
	out := make([]contend, n)
	for i := range out {
		js := jetStream(b, connectNATS(b, s.nats.url()))
		e, err := leadelect.New(js, leadelect.Config{Key: key, ID: "candidate-" + strconv.Itoa(i), TTL: cycleTTL})
		if err != nil {
			b.Fatal(err)
		}
		terms := make(chan time.Time, 1)
		var once sync.Once
		out[i] = func(ctx context.Context) (func(context.Context) error, time.Time, error) {
			once.Do(func() {
				go func() {
					_ = e.Run(ctx, leadelect.Callbacks{OnStartedLeading: func(lctx context.Context) {
						terms <- time.Now()
						<-lctx.Done()
					}})
				}()
			})
			select {
			case at := <-terms: // when OnStartedLeading was called
				return e.Resign, at, nil
			case <-ctx.Done():
				return nil, time.Time{}, ctx.Err()
			}
		}
	}
	return out
}
