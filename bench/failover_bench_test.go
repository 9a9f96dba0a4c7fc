package bench

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// failoverTTL is the lease TTL of the failover benchmark: the shortest
// the server supports, to keep the benchmark short.
const failoverTTL = time.Second

// failoverTimeout fails a failover that takes longer.
const failoverTimeout = 10 * failoverTTL

// BenchmarkFailover: the holder's connection dies (nc.Close, no
// release); how long until a waiter holds the key. One op is one
// failover. Two moments of death:
//
//   - after-acquire: the holder is killed the moment it has acquired,
//     right after its write over the previous holder's expiry marker;
//   - after-renew: it is killed right after its first renewal (seen by
//     a watcher of the key), the usual case of a holder that dies.
//
// Either way its last write lives a full TTL on the server. Metrics:
//
//   - failover-ms (p50) and failover-max-ms: from nc.Close to the
//     waiter's OnAcquired (manager) or the return of its Lock (dlock);
//   - expiry-ms: from nc.Close to the server's expiry marker, as a plain
//     watcher of the key sees it; markers-unseen counts the failovers
//     whose marker it did not see (the waiter's write replaced it first);
//   - ttl-ms: the lease TTL; kill-delay-max-ms: the longest time between
//     the holder's last write being seen and its connection closing.
//
// There are always two contenders: the holder and one waiter, each on
// a connection of its own; a new waiter replaces the killed holder.
func BenchmarkFailover(b *testing.B) {
	for _, kind := range []string{"manager", "dlock"} {
		for _, mode := range []string{"after-acquire", "after-renew"} {
			b.Run(kind+"/"+mode, func(b *testing.B) {
				srv := natstest.Start(b)
				f := &failoverRig{
					b: b, srv: srv, kind: kind, afterRenew: mode == "after-renew",
					bucket: "failover_" + kind, got: make(chan contender, 4),
				}
				f.setup()
				f.run()
			})
		}
	}
}

// contender is one holder or waiter, on a connection of its own.
type contender struct {
	nc    *nats.Conn
	stop  func()        // ends it once its connection is dead
	token func() uint64 // the revision it acquired at
	at    time.Time     // when it acquired
}

type failoverRig struct {
	b          *testing.B
	srv        *natstest.Server
	kind       string
	afterRenew bool
	bucket     string
	got        chan contender // contenders that acquired, and when
	next       int
	wg         sync.WaitGroup
	mu         sync.Mutex
	cleanup    []func()
	markers    chan time.Time // expiry markers seen by the observer
	puts       chan put       // writes seen by the observer
}

type put struct {
	rev uint64
	at  time.Time
}

func (f *failoverRig) setup() {
	ctx := benchContext(f.b)
	_, js := f.srv.JetStream()
	kv, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: f.bucket, TTL: failoverTTL})
	if err != nil {
		f.b.Fatal(err)
	}
	// An observer timestamps the server's expiry markers.
	w, err := kv.Watch(ctx, handoffKey, jetstream.UpdatesOnly())
	if err != nil {
		f.b.Fatal(err)
	}
	f.markers = make(chan time.Time, 64)
	f.puts = make(chan put, 64)
	f.wg.Go(func() {
		for e := range w.Updates() {
			switch {
			case e == nil:
			case e.Operation() == jetstream.KeyValuePurge:
				select {
				case f.markers <- time.Now():
				default:
				}
			case e.Operation() == jetstream.KeyValuePut:
				select {
				case f.puts <- put{rev: e.Revision(), at: time.Now()}:
				default:
				}
			}
		}
	})
	f.b.Cleanup(func() {
		_ = w.Stop()
		f.mu.Lock()
		fns := f.cleanup
		f.mu.Unlock()
		for _, fn := range fns {
			fn()
		}
		f.wg.Wait()
	})
}

// addContender starts a LeaseManager or a blocked Lock call on a new
// connection.
func (f *failoverRig) addContender() {
	id := f.next
	f.next++
	nc := f.srv.Connect()
	ctx, cancel := context.WithCancel(context.Background())
	f.onCleanup(cancel)
	switch f.kind {
	case "manager":
		var c contender
		m := natskvlease.NewLeaseManager(openKV(f.b, nc, f.bucket), natskvlease.LeaseConfig{
			Key: handoffKey, TTL: failoverTTL, Value: holderValue("failover-" + strconv.Itoa(id)),
			Callbacks: natskvlease.LeaseCallbacks{OnAcquired: func() {
				c.at = time.Now()
				f.got <- c
			}},
		})
		c.token = m.Token
		stop := func() {
			cancel()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = m.Stop(sctx)
		}
		c.nc, c.stop = nc, stop
		if err := m.Start(ctx); err != nil {
			f.b.Fatalf("Start: %v", err)
		}
		f.onCleanup(stop)
	case "dlock":
		js, err := jetstream.New(nc)
		if err != nil {
			f.b.Fatal(err)
		}
		client, err := dlock.New(ctx, js, dlock.WithBucket(f.bucket), dlock.WithTTL(failoverTTL))
		if err != nil {
			f.b.Fatalf("dlock.New: %v", err)
		}
		stop := func() {
			cancel()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = client.Close(sctx)
		}
		f.onCleanup(stop)
		f.wg.Go(func() {
			l, err := client.Lock(ctx, handoffKey)
			at := time.Now()
			if err == nil {
				f.got <- contender{nc: nc, stop: stop, token: l.Token, at: at}
			}
		})
	}
}

func (f *failoverRig) onCleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanup = append(f.cleanup, fn)
}

func (f *failoverRig) await() contender {
	select {
	case c := <-f.got:
		return c
	case <-time.After(failoverTimeout):
		f.b.Fatalf("no waiter got the key within %v", failoverTimeout)
	}
	return contender{}
}

// awaitRenewal waits until the observer sees a write after revision
// token (the holder's first renewal) and returns when it saw it.
func (f *failoverRig) awaitRenewal(token uint64) time.Time {
	timeout := time.After(failoverTTL)
	for {
		select {
		case p := <-f.puts:
			if p.rev > token {
				return p.at
			}
		case <-timeout:
			f.b.Fatalf("no renewal after revision %d seen within %v", token, failoverTTL)
		}
	}
}

func (f *failoverRig) run() {
	b := f.b
	f.addContender()
	holder := f.await()
	f.addContender()
	time.Sleep(50 * time.Millisecond) // the waiter watches the key
	var failovers, expiries, gaps []time.Duration
	unseen := 0
	failover := func() {
		for len(f.markers) > 0 { // seen before the kill: not this failover's
			<-f.markers
		}
		lastWrite := holder.at
		if f.afterRenew {
			lastWrite = f.awaitRenewal(holder.token())
		}
		killed := time.Now()
		holder.nc.Close()
		// A new waiter replaces the dead holder; it has about a TTL to
		// start watching.
		f.addContender()
		next := f.await()
		failovers = append(failovers, next.at.Sub(killed))
		gaps = append(gaps, killed.Sub(lastWrite))
		// The observer may not see the marker at all: on a History 1
		// bucket the waiter's write replaces it at once, and a watcher
		// that lags skips it.
		select {
		case m := <-f.markers:
			expiries = append(expiries, m.Sub(killed))
		case <-time.After(100 * time.Millisecond):
			expiries = append(expiries, -1)
			unseen++
		}
		// The dead holder's lease ends at its safety deadline; stop it
		// in the background, it cannot reach the server anyway.
		f.wg.Go(holder.stop)
		holder = next
	}
	failover() // the first holder was not killed at once: not counted
	failovers, expiries, gaps, unseen = nil, nil, nil, 0
	for b.Loop() {
		failover()
	}
	rows := make([][]string, len(failovers))
	var seen []time.Duration
	for i := range failovers {
		exp := math.NaN()
		if expiries[i] >= 0 {
			exp = millis(expiries[i])
			seen = append(seen, expiries[i])
		}
		rows[i] = []string{fmt.Sprintf("%.3f", millis(gaps[i])), fmt.Sprintf("%.1f", exp), fmt.Sprintf("%.1f", millis(failovers[i]))}
	}
	writeSamples(b, sampleFile("failover", b.Name()), "kill_after_write_ms\texpiry_ms\tfailover_ms", rows)
	b.ReportMetric(millis(percentile(failovers, 50)), "failover-ms")
	b.ReportMetric(millis(percentile(failovers, 100)), "failover-max-ms")
	if len(seen) > 0 {
		b.ReportMetric(millis(percentile(seen, 50)), "expiry-ms")
	}
	b.ReportMetric(float64(unseen), "markers-unseen")
	b.ReportMetric(millis(failoverTTL), "ttl-ms")
	b.ReportMetric(millis(percentile(gaps, 100)), "kill-delay-max-ms")
}
