package bench

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
)

// manyTTL is the TTL of the leases of BenchmarkManyLeases: renewed every
// third of it.
const manyTTL = 10 * time.Second

// acquirers is how many goroutines acquire the leases at the start.
const acquirers = 32

// BenchmarkManyLeases: NATSKVLEASE_BENCH_LEASES leases (default 1000)
// on one connection, each renewed in the background by RunCamping at TTL
// 10s, held for NATSKVLEASE_BENCH_DURATION (default 15s). The server runs
// in a separate process, so the figures are the client's:
//
//   - cpu-ms/s: client CPU time (user+system, getrusage) per second of
//     holding; server-cpu-ms/s the same for the server process;
//   - cpu-µs/renewal: client CPU time per renewal made;
//   - heap-B/lease, stack-B/lease: live heap (after GC) and goroutine
//     stacks per lease, against the same process before the leases;
//   - goroutines/lease: goroutines per held lease;
//   - acquire-s: time to acquire them all (32 goroutines);
//   - lost: leases lost during the hold (should be 0).
//
// It runs once whatever b.N is; ns/op is the whole run.
func BenchmarkManyLeases(b *testing.B) {
	n := envInt(b, "NATSKVLEASE_BENCH_LEASES", 1000)
	hold := envDuration(b, "NATSKVLEASE_BENCH_DURATION", 15*time.Second)
	srv := startChildServer(b)
	ctx := benchContext(b)

	setupNC := connectChild(b, srv.url)
	js, err := jetstream.New(setupNC)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "many", TTL: manyTTL}); err != nil {
		b.Fatal(err)
	}
	nc := connectChild(b, srv.url)
	kv := openKV(b, nc, "many")

	var lost atomic.Int64
	leases := make([]*natskvlease.Lease, n)
	for i := range leases {
		leases[i] = natskvlease.NewLease(kv, natskvlease.LeaseConfig{
			Key:       fmt.Sprintf("lease.%d", i),
			TTL:       manyTTL,
			Value:     holderValue(fmt.Sprintf("holder-%d", i)),
			Callbacks: natskvlease.LeaseCallbacks{OnLost: func() { lost.Add(1) }},
		})
	}
	heap0, stack0, g0 := memory()

	for b.Loop() {
		campCtx, stopCamping := context.WithCancel(ctx)
		start := time.Now()
		var wg sync.WaitGroup
		var next atomic.Int64
		var failed atomic.Int64
		for range acquirers {
			wg.Go(func() {
				for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
					if ok, err := leases[i].RunCamping(campCtx); !ok {
						failed.Add(1)
						b.Errorf("RunCamping lease %d = %v, %v", i, ok, err)
					}
				}
			})
		}
		wg.Wait()
		acquired := time.Since(start)
		if failed.Load() > 0 {
			stopCamping()
			b.FailNow()
		}
		heap1, stack1, g1 := memory()

		cpu0, srvCPU0 := processCPU(), srv.cpu()
		renewals0 := renewalsSent(nc)
		held := time.Now()
		time.Sleep(hold)
		heldFor := time.Since(held)
		cpu := processCPU() - cpu0
		srvCPU := srv.cpu() - srvCPU0
		renewals := renewalsSent(nc) - renewals0

		stillHeld := 0
		for _, l := range leases {
			if l.IsHeld() {
				stillHeld++
			}
		}
		// Client CPU per renewal against a bare js.PublishMsg carrying the
		// same headers, both back to back on one goroutine, so that the
		// runtime's cost of waking for paced work (which getrusage counts,
		// and which dwarfs a publish at a few hundred a second) is left
		// out of both.
		seqCPU, seqRenewals := sequentialRenewals(b, leases)
		rawCPU, rawPublishes := rawPublishes(b, nc, "many", n)
		if seqRenewals > 0 && rawPublishes > 0 {
			perRenewal := micros(seqCPU) / float64(seqRenewals)
			perPublish := micros(rawCPU) / float64(rawPublishes)
			b.ReportMetric(perRenewal, "seq-cpu-µs/renewal")
			b.ReportMetric(perPublish, "raw-cpu-µs/publish")
			b.ReportMetric(perRenewal/perPublish, "renewal/raw-cpu")
		}

		stopCamping() // every loop releases its lease
		for _, l := range leases {
			l.StopCamping() // waits for the loop to end
		}

		b.ReportMetric(float64(n), "leases")
		b.ReportMetric(heldFor.Seconds(), "held-s")
		b.ReportMetric(acquired.Seconds(), "acquire-s")
		b.ReportMetric(millis(cpu)/heldFor.Seconds(), "cpu-ms/s")
		b.ReportMetric(millis(srvCPU)/heldFor.Seconds(), "server-cpu-ms/s")
		if renewals > 0 {
			b.ReportMetric(micros(cpu)/float64(renewals), "cpu-µs/renewal")
		}
		b.ReportMetric(float64(renewals)/heldFor.Seconds(), "renewals/s")
		b.ReportMetric(float64(heap1-heap0)/float64(n), "heap-B/lease")
		b.ReportMetric(float64(stack1-stack0)/float64(n), "stack-B/lease")
		b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/lease")
		b.ReportMetric(float64(lost.Load()), "lost")
		b.ReportMetric(float64(n-stillHeld), "not-held")
	}
}

// connectChild connects to the child server, closed when tb ends.
func connectChild(tb testing.TB, url string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// renewalsSent approximates the renewals made by the messages the
// connection published (one per renewal while holding).
func renewalsSent(nc *nats.Conn) uint64 { return nc.Stats().OutMsgs }

// memory returns the live heap (after a GC), the goroutine stacks in
// use and the number of goroutines.
func memory() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkManyLocks: NATSKVLEASE_BENCH_LEASES dlock locks (default
// 1000) held through one Client, renewed by their leases, for
// NATSKVLEASE_BENCH_DURATION (default 15s), against a server in its own
// process. It reports goroutines-before and goroutines-after (the
// process's goroutines without and with the locks held),
// goroutines/lock, heap-B/lock, cpu-µs/renewal and lost.
func BenchmarkManyLocks(b *testing.B) {
	n := envInt(b, "NATSKVLEASE_BENCH_LEASES", 1000)
	hold := envDuration(b, "NATSKVLEASE_BENCH_DURATION", 15*time.Second)
	srv := startChildServer(b)
	ctx := benchContext(b)
	nc := connectChild(b, srv.url)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	client, err := dlock.New(ctx, js, dlock.WithBucket("manylocks"), dlock.WithTTL(manyTTL))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = client.Close(context.Background()) }()
	heap0, _, g0 := memory()
	for b.Loop() {
		locks := make([]*dlock.Lock, n)
		var wg sync.WaitGroup
		var next atomic.Int64
		start := time.Now()
		for range acquirers {
			wg.Go(func() {
				for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
					l, err := client.TryLock(ctx, fmt.Sprintf("lock.%d", i))
					if err != nil {
						b.Errorf("TryLock %d: %v", i, err)
						return
					}
					locks[i] = l
				}
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		acquired := time.Since(start)
		heap1, _, g1 := memory()
		cpu0, renewals0 := processCPU(), renewalsSent(nc)
		held := time.Now()
		time.Sleep(hold)
		heldFor := time.Since(held)
		cpu, renewals := processCPU()-cpu0, renewalsSent(nc)-renewals0
		lost := 0
		for _, l := range locks {
			if l.Context().Err() != nil {
				lost++
			}
		}
		for _, l := range locks {
			_ = l.Unlock(ctx)
		}
		b.ReportMetric(float64(n), "locks")
		b.ReportMetric(heldFor.Seconds(), "held-s")
		b.ReportMetric(acquired.Seconds(), "acquire-s")
		b.ReportMetric(float64(g0), "goroutines-before")
		b.ReportMetric(float64(g1), "goroutines-after")
		b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/lock")
		b.ReportMetric(float64(heap1-heap0)/float64(n), "heap-B/lock")
		if renewals > 0 {
			b.ReportMetric(micros(cpu)/float64(renewals), "cpu-µs/renewal")
		}
		b.ReportMetric(float64(lost), "lost")
	}
}

// sequentialRenewals stops the leases' loops (without releasing) and
// renews each of them once, back to back, returning the CPU time spent
// and the renewals made.
func sequentialRenewals(b *testing.B, leases []*natskvlease.Lease) (time.Duration, int) {
	b.Helper()
	for _, l := range leases {
		l.StopKeepAlive()
	}
	ctx := benchContext(b)
	made := 0
	cpu0 := processCPU()
	for _, l := range leases {
		if ok, _ := l.Renew(ctx); ok {
			made++
		}
	}
	return processCPU() - cpu0, made
}

// rawPublishes writes n keys of bucket, then rewrites each once, back to
// back, with a revision-checked js.PublishMsg carrying the headers a
// renewal carries, returning the CPU time of the rewrites and how many
// were acknowledged.
func rawPublishes(b *testing.B, nc *nats.Conn, bucket string, n int) (time.Duration, int) {
	b.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ttl := manyTTL.String()
	publish := func(key string, expected uint64) (uint64, error) {
		m := &nats.Msg{Subject: "$KV." + bucket + "." + key, Data: []byte("raw-holder"), Header: nats.Header{}}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expected, 10))
		m.Header.Set(jetstream.MsgTTLHeader, ttl)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
	revs := make([]uint64, n)
	for i := range revs {
		rev, err := publish(fmt.Sprintf("raw.%d", i), 0)
		if err != nil {
			b.Fatalf("raw write: %v", err)
		}
		revs[i] = rev
	}
	made := 0
	cpu0 := processCPU()
	for i := range revs {
		if _, err := publish(fmt.Sprintf("raw.%d", i), revs[i]); err == nil {
			made++
		}
	}
	return processCPU() - cpu0, made
}
