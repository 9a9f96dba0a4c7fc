package natskvlease

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var bucketSeq atomic.Int64

// testBucket creates a fresh lease bucket (memory, MaxAge ttl, markers on)
// on srv through a new connection, and returns it bound to its JetStream.
func testBucket(t *testing.T, srv *natstest.Server, ttl time.Duration) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	return testBucketOn(t, srv, ttl, false)
}

// testBucketOn is testBucket, in file storage if file is set.
func testBucketOn(t *testing.T, srv *natstest.Server, ttl time.Duration, file bool) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	_, js := srv.JetStream()
	kv, err := NewKVHelper(js, nil).GetOrCreateBucket(natstest.Context(t), BucketConfig{
		Bucket:      fmt.Sprintf("leases_%d", bucketSeq.Add(1)),
		TTL:         ttl,
		FileStorage: file,
	})
	if err != nil {
		t.Fatalf("GetOrCreateBucket: %v", err)
	}
	return js, kv
}

// openBucket opens the same bucket on a new connection, as another
// process would.
func openBucket(t *testing.T, srv *natstest.Server, bucket string) jetstream.KeyValue {
	t.Helper()
	_, js := srv.JetStream()
	kv, err := js.KeyValue(natstest.Context(t), bucket)
	if err != nil {
		t.Fatalf("open bucket %s: %v", bucket, err)
	}
	return BindJetStream(kv, js)
}

// spyAll subscribes a connection of its own to every subject on srv, so
// that a test can count what an operation sent. Messages from one
// connection reach it in the order they were sent, so a sentinel
// published after an operation marks where its traffic ends.
func spyAll(t *testing.T, srv *natstest.Server) *nats.Subscription {
	t.Helper()
	spy := srv.Connect()
	sub, err := spy.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}
