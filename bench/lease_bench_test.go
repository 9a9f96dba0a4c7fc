package bench

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// leaseTTL is the TTL of the leases in the acquire, renew and handoff
// benchmarks: long enough never to expire during them.
const leaseTTL = 10 * time.Second

// BenchmarkAcquireRelease: one acquire+release cycle on one key, three
// ways, interleaved (see interleave):
//
//   - raw: kv.Update on the delete marker's revision, then
//     kv.Delete(LastRevision) of the revision written: the cheapest valid
//     cycle the KeyValue API offers. kv.Delete does not return the
//     marker's revision; nothing else writes the bucket between the two
//     calls, so it is the written revision + 1 (revisions are the
//     stream's sequence).
//   - raw-ttl: the same, but the write is what a lease sends: a publish
//     with the expected-revision header and a per-message TTL (kv.Update
//     cannot carry one).
//   - lease: Lease.Acquire + Lease.Release. After the first Release the
//     lease knows the marker's revision, so each Acquire is one write.
func BenchmarkAcquireRelease(b *testing.B) {
	forTopologies(b, func(b *testing.B, top *topology) {
		ctx := benchContext(b)
		// One bucket, a key each: on R3 a bucket each could have its
		// stream leader on another server, which would weigh more than
		// anything measured here.
		kv, js := top.newBucket(b, "cycle", leaseTTL)
		rawKV, ttlKV, leaseKV := kv, kv, kv
		l := natskvlease.NewLease(leaseKV, natskvlease.LeaseConfig{Key: "lease", TTL: leaseTTL, Value: holderValue("lease")})
		cycle := func() {
			if ok, err := l.Acquire(ctx); !ok || err != nil {
				b.Fatalf("Acquire = %v, %v", ok, err)
			}
			if err := l.Release(ctx); err != nil {
				b.Fatalf("Release: %v", err)
			}
		}
		cycle() // learns the bucket's TTL policy and the marker's revision
		interleave(b,
			namedOp{"raw", newRawCycle(b, rawKV, "raw", func(ctx context.Context, key string, val []byte, marker uint64) (uint64, error) {
				return rawKV.Update(ctx, key, val, marker)
			})},
			namedOp{"raw-ttl", newRawCycle(b, ttlKV, "rawttl", ttlPublisher(js, ttlKV.Bucket()))},
			namedOp{"lease", cycle},
		)
	})
}

// namedOp is one of the operations interleave compares.
type namedOp struct {
	name string
	op   func()
}

// interleave runs one of each op per iteration, in an order that rotates,
// and reports each op's median time as <name>-ns/op and its ratio to the
// first op's as <name>/<first> (and the last op's to the second's).
// Measured side by side like this, a machine that slows down for a
// moment slows all of them alike, so the ratios hold on a noisy machine;
// medians keep a rare stall (a leader election, a GC) out of them.
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
	medians := make([]float64, len(ops))
	for i, o := range ops {
		medians[i] = float64(percentile(samples[i], 50))
		b.ReportMetric(medians[i], o.name+"-ns/op")
	}
	for i := 1; i < len(ops); i++ {
		b.ReportMetric(medians[i]/medians[0], ops[i].name+"/"+ops[0].name)
	}
	if last := len(ops) - 1; last > 1 {
		b.ReportMetric(medians[last]/medians[1], ops[last].name+"/"+ops[1].name)
	}
}

type writeFunc func(ctx context.Context, key string, val []byte, expected uint64) (uint64, error)

// newRawCycle returns one raw acquire+release cycle on key: write on the
// marker's revision, delete the revision written.
func newRawCycle(b *testing.B, kv jetstream.KeyValue, key string, write writeFunc) func() {
	ctx := benchContext(b)
	val := holderValue(key)
	rev, err := kv.Create(ctx, key, val)
	if err != nil {
		b.Fatalf("Create: %v", err)
	}
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		b.Fatalf("Delete: %v", err)
	}
	marker := rev + 1
	return func() {
		retryFalseConflict(b, "write", func() (err error) {
			rev, err = write(ctx, key, val, marker)
			return err
		})
		retryFalseConflict(b, "delete", func() error {
			return kv.Delete(ctx, key, jetstream.LastRevision(rev))
		})
		marker = rev + 1
	}
}

// ttlPublisher returns a write as a lease sends it: a publish to the
// key's subject with the expected revision and a per-message TTL, on the
// bucket's connection.
func ttlPublisher(js jetstream.JetStream, bucket string) writeFunc {
	return func(ctx context.Context, key string, val []byte, expected uint64) (uint64, error) {
		m := &nats.Msg{Subject: "$KV." + bucket + "." + key, Data: val, Header: nats.Header{}}
		ack, err := js.PublishMsg(ctx, m,
			jetstream.WithExpectLastSequencePerSubject(expected),
			jetstream.WithMsgTTL(leaseTTL))
		if err != nil {
			if isMismatch(err) {
				return 0, jetstream.ErrKeyRevisionMismatch
			}
			return 0, err
		}
		return ack.Sequence, nil
	}
}

// isMismatch reports the server's "wrong last sequence" answers (10071
// on one replica, 10164 on a replicated stream).
func isMismatch(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164
	}
	return false
}

// BenchmarkRenew: one renewal of a held lease, three ways, interleaved:
//
//   - raw: kv.Update on the revision last written.
//   - raw-ttl: the same write as a lease sends it, with a per-message TTL.
//   - lease: Lease.Renew.
func BenchmarkRenew(b *testing.B) {
	forTopologies(b, func(b *testing.B, top *topology) {
		ctx := benchContext(b)
		kv, js := top.newBucket(b, "renew", leaseTTL) // one bucket: see BenchmarkAcquireRelease
		rawKV, ttlKV, leaseKV := kv, kv, kv
		l := natskvlease.NewLease(leaseKV, natskvlease.LeaseConfig{Key: "lease", TTL: leaseTTL, Value: holderValue("lease")})
		if ok, err := l.Acquire(ctx); !ok || err != nil {
			b.Fatalf("Acquire = %v, %v", ok, err)
		}
		interleave(b,
			namedOp{"raw", newRawRenew(b, rawKV, "raw", func(ctx context.Context, key string, val []byte, expected uint64) (uint64, error) {
				return rawKV.Update(ctx, key, val, expected)
			})},
			namedOp{"raw-ttl", newRawRenew(b, ttlKV, "rawttl", ttlPublisher(js, ttlKV.Bucket()))},
			namedOp{"lease", func() {
				if ok, err := l.Renew(ctx); !ok || err != nil {
					b.Fatalf("Renew = %v, %v", ok, err)
				}
			}},
		)
		if err := l.Release(ctx); err != nil {
			b.Fatalf("Release: %v", err)
		}
	})
}

// newRawRenew returns one raw renewal of key: an update on the revision
// last written.
func newRawRenew(b *testing.B, kv jetstream.KeyValue, key string, write writeFunc) func() {
	ctx := benchContext(b)
	val := holderValue(key)
	rev, err := kv.Create(ctx, key, val)
	if err != nil {
		b.Fatalf("Create: %v", err)
	}
	return func() {
		retryFalseConflict(b, "update", func() (err error) {
			next, err := write(ctx, key, val, rev)
			if err == nil {
				rev = next
			}
			return err
		})
	}
}
