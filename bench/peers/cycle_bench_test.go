package peers

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
)

// cycleTTL is the TTL of the locks and leases of the cycle, keep-alive
// and handoff benchmarks: long enough never to expire during them.
const cycleTTL = 10 * time.Second

// namedOp is one of the operations interleave compares.
type namedOp struct {
	name string
	op   func()
}

// interleave runs one of each op per iteration, in an order that
// rotates, and reports each op's median as <name>-µs (and p99 as
// <name>-p99-µs). A moment when the machine is slow slows all of them
// alike; medians keep rare stalls out.
func interleave(b *testing.B, ops ...namedOp) {
	samples := make([][]time.Duration, len(ops))
	n := 0
	for b.Loop() {
		for k := range ops {
			i := (n + k) % len(ops)
			start := time.Now()
			ops[i].op()
			samples[i] = append(samples[i], time.Since(start))
		}
		n++
	}
	for i, o := range ops {
		b.ReportMetric(micros(percentile(samples[i], 50)), o.name+"-µs")
		b.ReportMetric(micros(percentile(samples[i], 99)), o.name+"-p99-µs")
	}
}

// newBucket creates a lease bucket (memory storage, MaxAge and
// per-key TTLs ttl) and returns it bound to a new connection's
// JetStream.
func newBucket(tb testing.TB, natsURL, bucket string, ttl time.Duration) jetstream.KeyValue {
	tb.Helper()
	js := jetStream(tb, connectNATS(tb, natsURL))
	kv, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(benchContext(tb), natskvlease.BucketConfig{Bucket: bucket, TTL: ttl})
	if err != nil {
		tb.Fatalf("bucket %s: %v", bucket, err)
	}
	return kv
}

func holderValue(id string) []byte {
	return fmt.Appendf(nil, `{"owner":%q,"host":"bench","pid":%d}`, id, os.Getpid())
}

// etcdSession opens a client and a session (a lease of ttl, kept alive
// in the background) on the etcd of sys.
func etcdSession(tb testing.TB, s *servers, sys string, ttl time.Duration) (*clientv3.Client, *concurrency.Session) {
	tb.Helper()
	cli := connectEtcd(tb, s.etcd[sys].client)
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl/time.Second)))
	if err != nil {
		tb.Fatalf("%s session: %v", sys, err)
	}
	tb.Cleanup(func() { _ = sess.Close() })
	return cli, sess
}

// BenchmarkLockCycle: the uncontended lock cycle, one op of each kind
// per iteration, interleaved:
//
//   - dlock: Client.Lock + Lock.Unlock of a free key;
//   - lease: Lease.Acquire + Lease.Release (the library's core, no
//     waiting machinery), on one Lease that knows the vacancy its last
//     Release left (one write to acquire);
//   - fresh-lease: the same with a new Lease each cycle, which reads the
//     key before it writes, in a bucket of its own;
//   - busy-lease: Lease.AcquireWait + Release on a key of the
//     fresh-lease's bucket, whose writes fall between its own: each
//     holding is crowded (see the README's waiter queue), so each relock
//     first reads the latest of the key's queue tickets, one more round
//     trip (as dlock's Lock pays in a bucket other keys write to);
//   - etcd-fsync, etcd-nofsync: concurrency.NewMutex(...).Lock + Unlock,
//     on a session created once, as etcd's users hold it.
func BenchmarkLockCycle(b *testing.B) {
	s := startShared(b)
	ctx := benchContext(b)
	js := jetStream(b, connectNATS(b, s.nats.url()))
	locks, err := dlock.New(ctx, js, dlock.WithBucket("cycle_dlock"), dlock.WithTTL(cycleTTL))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = locks.Close(context.Background()) }()
	kv := newBucket(b, s.nats.url(), "cycle_lease", cycleTTL)
	l := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "lease", TTL: cycleTTL, Value: holderValue("lease")})
	freshKV := newBucket(b, s.nats.url(), "cycle_fresh", cycleTTL)
	busy := natskvlease.NewLease(freshKV, natskvlease.LeaseConfig{Key: "busy", TTL: cycleTTL, Value: holderValue("busy")})

	ops := []namedOp{
		{"dlock", func() {
			lk, err := locks.Lock(ctx, "cycle")
			if err != nil {
				b.Fatalf("Lock: %v", err)
			}
			if err := lk.Unlock(ctx); err != nil {
				b.Fatalf("Unlock: %v", err)
			}
		}},
		{"lease", func() {
			if ok, err := l.Acquire(ctx); !ok || err != nil {
				b.Fatalf("Acquire = %v, %v", ok, err)
			}
			if err := l.Release(ctx); err != nil {
				b.Fatalf("Release: %v", err)
			}
		}},
		{"fresh-lease", func() {
			// A new Lease each cycle, as dlock takes one per Lock: it
			// knows nothing of the key, so it reads before it writes.
			fl := natskvlease.NewLease(freshKV, natskvlease.LeaseConfig{Key: "fresh", TTL: cycleTTL, Value: holderValue("fresh")})
			if ok, err := fl.Acquire(ctx); !ok || err != nil {
				b.Fatalf("fresh Acquire = %v, %v", ok, err)
			}
			if err := fl.Release(ctx); err != nil {
				b.Fatalf("fresh Release: %v", err)
			}
		}},
		{"busy-lease", func() {
			if err := busy.AcquireWait(ctx); err != nil {
				b.Fatalf("busy AcquireWait: %v", err)
			}
			if err := busy.Release(ctx); err != nil {
				b.Fatalf("busy Release: %v", err)
			}
		}},
	}
	for _, sys := range etcdSystems {
		_, sess := etcdSession(b, s, sys, cycleTTL)
		ops = append(ops, namedOp{sys, func() {
			m := concurrency.NewMutex(sess, "/cycle")
			if err := m.Lock(ctx); err != nil {
				b.Fatalf("%s Lock: %v", sys, err)
			}
			if err := m.Unlock(ctx); err != nil {
				b.Fatalf("%s Unlock: %v", sys, err)
			}
		}})
	}
	for _, o := range ops { // warm up: buckets, TTL policy, connections
		o.op()
	}
	interleave(b, ops...)
}

// BenchmarkKeepAlive: one renewal, interleaved:
//
//   - lease: Lease.Renew of a held lease (a revision-checked write
//     with a per-message TTL, as its background renewal sends);
//   - etcd-fsync, etcd-nofsync: one LeaseKeepAliveRequest and its
//     response on a long-lived LeaseKeepAlive stream, as the client's
//     background keep-alive loop sends them (KeepAliveOnce would open a
//     stream per call, which etcd's sessions never do).
func BenchmarkKeepAlive(b *testing.B) {
	s := startShared(b)
	ctx := benchContext(b)
	kv := newBucket(b, s.nats.url(), "keepalive", cycleTTL)
	l := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "lease", TTL: cycleTTL, Value: holderValue("lease")})
	if ok, err := l.Acquire(ctx); !ok || err != nil {
		b.Fatalf("Acquire = %v, %v", ok, err)
	}
	defer func() { _ = l.Release(context.Background()) }()
	ops := []namedOp{{"lease", func() {
		if ok, err := l.Renew(ctx); !ok || err != nil {
			b.Fatalf("Renew = %v, %v", ok, err)
		}
	}}}
	for _, sys := range etcdSystems {
		cli := connectEtcd(b, s.etcd[sys].client)
		grant, err := cli.Grant(ctx, int64(cycleTTL/time.Second))
		if err != nil {
			b.Fatal(err)
		}
		stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		req := &pb.LeaseKeepAliveRequest{ID: int64(grant.ID)}
		ops = append(ops, namedOp{sys, func() {
			if err := stream.Send(req); err != nil {
				b.Fatalf("%s keep-alive send: %v", sys, err)
			}
			resp, err := stream.Recv()
			if err != nil || resp.TTL <= 0 {
				b.Fatalf("%s keep-alive = %v, %v", sys, resp, err)
			}
		}})
	}
	for _, o := range ops {
		o.op()
	}
	interleave(b, ops...)
}
