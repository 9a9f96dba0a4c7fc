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

// BenchmarkAcquireRelease: one acquire+release cycle on one key.
//
//   - raw: kv.Update on the delete marker's revision, then
//     kv.Delete(LastRevision) of the revision written: the cheapest valid
//     cycle the KeyValue API offers. kv.Delete does not return the
//     marker's revision; nothing else writes the bucket meanwhile, so it
//     is the written revision + 1 (revisions are the stream's sequence).
//   - raw-ttl: the same, but the write is what a lease sends: a publish
//     with the expected-revision header and a per-message TTL (kv.Update
//     cannot carry one).
//   - lease: Lease.Acquire + Lease.Release. After the first Release the
//     lease knows the marker's revision, so each Acquire is one write.
func BenchmarkAcquireRelease(b *testing.B) {
	forTopologies(b, func(b *testing.B, top *topology) {
		b.Run("raw", func(b *testing.B) {
			kv, _ := top.newBucket(b, "cycle_raw", leaseTTL)
			benchRawCycle(b, kv, "raw", func(ctx context.Context, key string, val []byte, marker uint64) (uint64, error) {
				return kv.Update(ctx, key, val, marker)
			})
		})
		b.Run("raw-ttl", func(b *testing.B) {
			kv, js := top.newBucket(b, "cycle_rawttl", leaseTTL)
			benchRawCycle(b, kv, "rawttl", ttlPublisher(js, kv.Bucket()))
		})
		b.Run("lease", func(b *testing.B) {
			ctx := benchContext(b)
			kv, _ := top.newBucket(b, "cycle_lease", leaseTTL)
			l := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "lease", TTL: leaseTTL, Value: holderValue("lease")})
			cycle := func() {
				if ok, err := l.Acquire(ctx); !ok || err != nil {
					b.Fatalf("Acquire = %v, %v", ok, err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatalf("Release: %v", err)
				}
			}
			cycle() // learns the bucket's TTL policy and the marker's revision
			for b.Loop() {
				cycle()
			}
		})
	})
}

type writeFunc func(ctx context.Context, key string, val []byte, expected uint64) (uint64, error)

func benchRawCycle(b *testing.B, kv jetstream.KeyValue, key string, write writeFunc) {
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
	repeats := 0
	for b.Loop() {
		repeats += retryFalseConflict(b, "write", func() (err error) {
			rev, err = write(ctx, key, val, marker)
			return err
		})
		repeats += retryFalseConflict(b, "delete", func() error {
			return kv.Delete(ctx, key, jetstream.LastRevision(rev))
		})
		marker = rev + 1
	}
	if repeats > 0 {
		b.ReportMetric(float64(repeats)/float64(b.N), "false-conflicts/op")
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

// BenchmarkRenew: one renewal of a held lease.
//
//   - raw: kv.Update on the revision last written.
//   - raw-ttl: the same write as a lease sends it, with a per-message TTL.
//   - lease: Lease.Renew.
func BenchmarkRenew(b *testing.B) {
	forTopologies(b, func(b *testing.B, top *topology) {
		b.Run("raw", func(b *testing.B) {
			kv, _ := top.newBucket(b, "renew_raw", leaseTTL)
			benchRawRenew(b, kv, "raw", func(ctx context.Context, key string, val []byte, expected uint64) (uint64, error) {
				return kv.Update(ctx, key, val, expected)
			})
		})
		b.Run("raw-ttl", func(b *testing.B) {
			kv, js := top.newBucket(b, "renew_rawttl", leaseTTL)
			benchRawRenew(b, kv, "rawttl", ttlPublisher(js, kv.Bucket()))
		})
		b.Run("lease", func(b *testing.B) {
			ctx := benchContext(b)
			kv, _ := top.newBucket(b, "renew_lease", leaseTTL)
			l := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "lease", TTL: leaseTTL, Value: holderValue("lease")})
			if ok, err := l.Acquire(ctx); !ok || err != nil {
				b.Fatalf("Acquire = %v, %v", ok, err)
			}
			for b.Loop() {
				if ok, err := l.Renew(ctx); !ok || err != nil {
					b.Fatalf("Renew = %v, %v", ok, err)
				}
			}
			if err := l.Release(ctx); err != nil {
				b.Fatalf("Release: %v", err)
			}
		})
	})
}

func benchRawRenew(b *testing.B, kv jetstream.KeyValue, key string, write writeFunc) {
	ctx := benchContext(b)
	val := holderValue(key)
	rev, err := kv.Create(ctx, key, val)
	if err != nil {
		b.Fatalf("Create: %v", err)
	}
	repeats := 0
	for b.Loop() {
		repeats += retryFalseConflict(b, "update", func() (err error) {
			var next uint64
			next, err = write(ctx, key, val, rev)
			if err == nil {
				rev = next
			}
			return err
		})
	}
	if repeats > 0 {
		b.ReportMetric(float64(repeats)/float64(b.N), "false-conflicts/op")
	}
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		b.Fatalf("Delete: %v", err)
	}
}
