package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
)

// handoffConns is the most connections the waiters of a handoff
// benchmark share ("a handful"): waiter i uses connection i mod
// handoffConns.
const handoffConns = 4

// handoffTimeout fails a handoff that takes longer: something is broken.
const handoffTimeout = 10 * time.Second

// BenchmarkHandoff: the holder releases; how long until one of the
// waiters holds the key. One op is one handoff; p50-µs and p99-µs are the
// handoff latencies, from the call that releases (LeaseManager.Stop,
// Lock.Unlock) to the waiter's OnAcquired callback or the return of its
// Lock call. rtt-p50-µs is the median latency of a raw kv.Update measured
// in the same benchmark, between handoffs; p50-rtts is p50-µs over it.
//
// Each handoff is followed by the start of a new waiter, so that there
// are always the same number of waiters, and a pause for it to settle
// (watch started, key read); ns/op includes that pause and means little.
//
// The waiters share handoffConns connections, as goroutines of a service
// would; "separate=10" gives ten waiters a connection (and for dlock a
// Client) each, as ten processes would have, so that none of them queue
// behind another in the process.
func BenchmarkHandoff(b *testing.B) {
	forTopologies(b, func(b *testing.B, top *topology) {
		for _, kind := range []string{"manager", "dlock"} {
			for _, waiters := range []int{1, 10, 100} {
				b.Run(fmt.Sprintf("%s/waiters=%d", kind, waiters), func(b *testing.B) {
					h := newHandoffRig(b, top, kind, waiters, min(waiters+1, handoffConns))
					h.run(b)
				})
			}
			b.Run(kind+"/separate=10", func(b *testing.B) {
				h := newHandoffRig(b, top, kind, 10, 11)
				h.run(b)
			})
		}
	})
}

// holding is a waiter that got the key, and when.
type holding struct {
	release func(context.Context) error
	at      time.Time
}

type handoffRig struct {
	top     *topology
	kind    string
	waiters int
	bucket  string
	kvs     []jetstream.KeyValue // one per connection
	clients []*dlock.Client      // dlock: one per connection
	next    int                  // ids of waiters
	got     chan holding
	stop    []func()       // stops the waiters, once
	wg      sync.WaitGroup // dlock waiter goroutines
	waitCtx context.Context
	cancel  context.CancelFunc
	settle  time.Duration
}

func newHandoffRig(b *testing.B, top *topology, kind string, waiters, conns int) *handoffRig {
	h := &handoffRig{
		top: top, kind: kind, waiters: waiters,
		bucket: fmt.Sprintf("handoff_%s_%d_%d", kind, waiters, conns),
		got:    make(chan holding, waiters+2),
		settle: 10 * time.Millisecond,
	}
	if top.replicas > 1 {
		h.settle = 30 * time.Millisecond
	}
	if waiters >= 100 {
		h.settle *= 3
	}
	h.waitCtx, h.cancel = context.WithCancel(context.Background())
	ctx := benchContext(b)
	switch kind {
	case "manager":
		_, _ = top.newBucket(b, h.bucket, leaseTTL)
		for range conns {
			h.kvs = append(h.kvs, openKV(b, top.connect(b), h.bucket))
		}
	case "dlock":
		for range conns {
			js, err := jetstream.New(top.connect(b))
			if err != nil {
				b.Fatal(err)
			}
			c, err := dlock.New(ctx, js, dlock.WithBucket(h.bucket), dlock.WithTTL(leaseTTL), dlock.WithReplicas(top.replicas))
			if err != nil {
				b.Fatalf("dlock.New: %v", err)
			}
			h.clients = append(h.clients, c)
		}
	}
	// Cleanups run last-in first-out: the waiters stop before the
	// connections close.
	b.Cleanup(h.shutdown)
	return h
}

const handoffKey = "leader"

// addWaiter starts one more contender for the key.
func (h *handoffRig) addWaiter(b *testing.B) {
	id := h.next
	h.next++
	switch h.kind {
	case "manager":
		var m *natskvlease.LeaseManager
		m = natskvlease.NewLeaseManager(h.kvs[id%len(h.kvs)], natskvlease.LeaseConfig{
			Key:   handoffKey,
			TTL:   leaseTTL,
			Value: holderValue("manager-" + strconv.Itoa(id)),
			Callbacks: natskvlease.LeaseCallbacks{OnAcquired: func() {
				h.got <- holding{release: m.Stop, at: time.Now()}
			}},
		})
		if err := m.Start(h.waitCtx); err != nil {
			b.Fatalf("Start: %v", err)
		}
		h.stop = append(h.stop, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = m.Stop(ctx)
		})
	case "dlock":
		c := h.clients[id%len(h.clients)]
		h.wg.Go(func() {
			l, err := c.Lock(h.waitCtx, handoffKey)
			at := time.Now()
			if err != nil {
				return // the benchmark ended
			}
			h.got <- holding{release: l.Unlock, at: at}
		})
	}
}

func (h *handoffRig) shutdown() {
	h.cancel()
	for _, stop := range h.stop {
		stop()
	}
	h.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(h.got) > 0 { // holders not released yet
		g := <-h.got
		_ = g.release(ctx)
	}
	for _, c := range h.clients {
		_ = c.Close(ctx)
	}
}

func (h *handoffRig) await(b *testing.B) holding {
	select {
	case g := <-h.got:
		return g
	case <-time.After(handoffTimeout):
		b.Fatalf("no waiter got the key within %v", handoffTimeout)
	}
	return holding{}
}

func (h *handoffRig) run(b *testing.B) {
	ctx := benchContext(b)
	// The first contender takes the key, then the waiters line up.
	h.addWaiter(b)
	holder := h.await(b)
	for range h.waiters {
		h.addWaiter(b)
	}
	time.Sleep(h.settle + time.Duration(h.waiters)*time.Millisecond)
	select {
	case <-h.got:
		b.Fatal("a waiter got the key while it was held")
	default:
	}

	// Raw round trips, on a connection of their own, between handoffs.
	rawKV := openKV(b, h.top.connect(b), h.bucketName())
	rawVal := holderValue("raw")
	rawRev, err := rawKV.Create(ctx, "rtt", rawVal)
	if err != nil {
		b.Fatalf("Create: %v", err)
	}

	var handoffs, releases, rtts, warm []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := holder.release(ctx); err != nil {
			b.Fatalf("release: %v", err)
		}
		released := time.Now()
		next := h.await(b)
		handoffs = append(handoffs, next.at.Sub(start))
		releases = append(releases, released.Sub(start))

		b.StopTimer()
		holder = next
		h.addWaiter(b)
		time.Sleep(h.settle)
		// The first update starts from idle, as a handoff does; the
		// second right after it.
		for i := range 2 {
			t := time.Now()
			retryFalseConflict(b, "raw update", func() (err error) {
				var rev uint64
				rev, err = rawKV.Update(ctx, "rtt", rawVal, rawRev)
				if err == nil {
					rawRev = rev
				}
				return err
			})
			if i == 0 {
				rtts = append(rtts, time.Since(t))
			} else {
				warm = append(warm, time.Since(t))
			}
		}
		b.StartTimer()
	}
	if err := holder.release(ctx); err != nil {
		b.Fatalf("release: %v", err)
	}

	rows := make([][]string, len(handoffs))
	for i := range handoffs {
		rows[i] = []string{us(handoffs[i]), us(releases[i]), us(rtts[i]), us(warm[i])}
	}
	writeSamples(b, sampleFile("handoff", b.Name()), "handoff_us\trelease_us\trtt_us\trtt_warm_us", rows)

	p50, p99, rtt := percentile(handoffs, 50), percentile(handoffs, 99), percentile(rtts, 50)
	b.ReportMetric(micros(p50), "p50-µs")
	b.ReportMetric(micros(p99), "p99-µs")
	b.ReportMetric(micros(rtt), "rtt-p50-µs")
	b.ReportMetric(float64(p50)/float64(rtt), "p50-rtts")
	b.ReportMetric(micros(percentile(releases, 50)), "release-p50-µs")
	b.ReportMetric(micros(percentile(warm, 50)), "rtt-warm-p50-µs")
}

// bucketName is the bucket the key lives in.
func (h *handoffRig) bucketName() string { return h.bucket }

func us(d time.Duration) string { return strconv.FormatFloat(micros(d), 'f', 1, 64) }
