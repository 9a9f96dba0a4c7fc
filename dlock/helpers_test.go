package dlock_test

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bucketSeq atomic.Int64

// env is one embedded server and a bucket name fresh to the test.
type env struct {
	t      *testing.T
	srv    *natstest.Server
	bucket string
	ttl    time.Duration
}

func newEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	return &env{
		t:      t,
		srv:    natstest.Start(t),
		bucket: fmt.Sprintf("locks_%d", bucketSeq.Add(1)),
		ttl:    ttl,
	}
}

// client opens a Client on a connection of its own, as another process
// would, and closes it when the test ends.
func (e *env) client() (*dlock.Client, *nats.Conn) {
	e.t.Helper()
	nc, js := e.srv.JetStream()
	c, err := dlock.New(natstest.Context(e.t), js, dlock.WithBucket(e.bucket), dlock.WithTTL(e.ttl))
	if err != nil {
		e.t.Fatalf("dlock.New: %v", err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c, nc
}

// consumers counts the consumers on the bucket's stream: each waiting
// Lock has one, for its watch.
func (e *env) consumers() int {
	e.t.Helper()
	_, js := e.srv.JetStream()
	return natstest.Consumers(e.t, js, e.bucket)
}

// mustLock locks key or fails the test.
func mustLock(t *testing.T, c *dlock.Client, key string) *dlock.Lock {
	t.Helper()
	l, err := c.Lock(natstest.Context(t), key)
	if err != nil {
		t.Fatalf("Lock(%q): %v", key, err)
	}
	return l
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitClosed waits for ch to close, failing the test after timeout.
func waitClosed(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(timeout):
		t.Fatalf("%s not closed within %v", what, timeout)
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// waitingWatches is how many consumers a lone waiting Lock keeps: being
// first in the key's waiter queue, a watch on the key, and nothing else.
const waitingWatches = 1
