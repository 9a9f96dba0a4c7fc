package peers

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/natskvlease/natskvlease/dlock"
)

// idleTTL is the TTL of the idle locks: renewed every third of it.
const idleTTL = 10 * time.Second

// acquirers is how many goroutines take the idle locks.
const acquirers = 32

// BenchmarkIdleLocks: PEERS_LOCKS locks (default 1000,10000: a
// sub-benchmark each) held through one client, idle, for PEERS_HOLD
// (default 20s), TTL 10s. Each system runs in turn (holding is not a
// thing to interleave) against a server in a child process of its own
// (the test binary, started again as that server), so the client's CPU
// is this process's (getrusage) and the server's is the child's (from
// /proc/<pid>/stat):
//
//   - dlock: one nats.Conn and dlock.Client, N TryLock calls; each lock
//     is a lease of its own, renewed by a revision-checked write;
//   - etcd-fsync, etcd-nofsync: one clientv3.Client, N sessions (a
//     lease each, so that each lock lives and dies on its own as a
//     dlock lock does) each holding one concurrency.Mutex; the client
//     renews the leases over its one LeaseKeepAlive stream.
//
// Per system: goroutines/lock and heap-B/lock (live heap after GC,
// against the same process with the client connected and no lock),
// cpu-µs/renewal and server-cpu-µs/renewal (CPU over the hold divided
// by the renewals sent: dlock's published messages, etcd's
// LeaseKeepAliveRequests counted by a gRPC stream interceptor),
// renewals/s, cpu-ms/s, server-cpu-ms/s and lost (locks no longer held
// at the end).
func BenchmarkIdleLocks(b *testing.B) {
	hold := envDuration(b, "PEERS_HOLD", 20*time.Second)
	for _, n := range envInts(b, "PEERS_LOCKS", []int{1000, 10000}) {
		b.Run(fmt.Sprintf("locks=%d", n), func(b *testing.B) {
			for _, sys := range []string{sysNATS, sysEtcdFsync, sysEtcdNoFsync} {
				name := sys
				if sys == sysNATS {
					name = "dlock"
				}
				b.Run(name, func(b *testing.B) {
					for b.Loop() {
						idleLocks(b, sys, n, hold)
					}
				})
			}
		})
	}
}

// idleHolder is one client holding n locks.
type idleHolder struct {
	renewals func() uint64 // renewals sent so far
	lost     func() int    // locks no longer held
}

func idleLocks(b *testing.B, sys string, n int, hold time.Duration) {
	srv := startChild(b, sys)
	ctx := benchContext(b)
	var h idleHolder
	var acquire func(i int) error
	switch sys {
	case sysNATS:
		nc := connectNATS(b, srv.url)
		c, err := dlock.New(ctx, jetStream(b, nc), dlock.WithBucket("idle"), dlock.WithTTL(idleTTL))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close(context.Background()) })
		locks := make([]*dlock.Lock, n)
		acquire = func(i int) (err error) {
			locks[i], err = c.TryLock(ctx, fmt.Sprintf("lock.%d", i))
			return err
		}
		h.renewals = func() uint64 { return nc.Stats().OutMsgs }
		h.lost = func() (lost int) {
			for _, l := range locks {
				if l.Context().Err() != nil {
					lost++
				}
			}
			return lost
		}
	default:
		var sent atomic.Uint64
		cli := connectEtcd(b, srv.url, grpc.WithChainStreamInterceptor(countKeepAlives(&sent)))
		sessions := make([]*concurrency.Session, n)
		acquire = func(i int) error {
			sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int(idleTTL/time.Second)))
			if err != nil {
				return err
			}
			sessions[i] = sess
			return concurrency.NewMutex(sess, fmt.Sprintf("/idle/%d", i)).Lock(ctx)
		}
		h.renewals = sent.Load
		h.lost = func() (lost int) {
			for _, s := range sessions {
				select {
				case <-s.Done():
					lost++
				default:
				}
			}
			return lost
		}
	}
	heap0, g0 := memory()
	var wg sync.WaitGroup
	var next atomic.Int64
	start := time.Now()
	for range acquirers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := acquire(i); err != nil {
					b.Errorf("%s: lock %d: %v", sys, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	acquired := time.Since(start)
	heap1, g1 := memory()

	cpu0, srv0, ren0 := processCPU(), srv.cpu(), h.renewals()
	held := time.Now()
	time.Sleep(hold)
	heldFor := time.Since(held)
	cpu, srvCPU, ren := processCPU()-cpu0, srv.cpu()-srv0, h.renewals()-ren0

	b.ReportMetric(float64(n), "locks")
	b.ReportMetric(acquired.Seconds(), "acquire-s")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/lock")
	b.ReportMetric(float64(int64(heap1)-int64(heap0))/float64(n), "heap-B/lock")
	b.ReportMetric(float64(ren)/heldFor.Seconds(), "renewals/s")
	if ren > 0 {
		b.ReportMetric(micros(cpu)/float64(ren), "cpu-µs/renewal")
		b.ReportMetric(micros(srvCPU)/float64(ren), "server-cpu-µs/renewal")
	}
	b.ReportMetric(millis(cpu)/heldFor.Seconds(), "cpu-ms/s")
	b.ReportMetric(millis(srvCPU)/heldFor.Seconds(), "server-cpu-ms/s")
	b.ReportMetric(float64(h.lost()), "lost")
}

// countKeepAlives counts the messages sent on LeaseKeepAlive streams:
// one per lease renewed.
func countKeepAlives(sent *atomic.Uint64) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Lease/LeaseKeepAlive" {
			return cs, err
		}
		return &countingStream{ClientStream: cs, sent: sent}, nil
	}
}

type countingStream struct {
	grpc.ClientStream
	sent *atomic.Uint64
}

func (s *countingStream) SendMsg(m any) error {
	s.sent.Add(1)
	return s.ClientStream.SendMsg(m)
}

// memory returns the live heap (after GC) and the goroutine count.
func memory() (heap uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, runtime.NumGoroutine()
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
