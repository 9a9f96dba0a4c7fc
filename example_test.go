package natskvlease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// The README's Quick start: take a lease once and renew it in the
// background while working. quickStart's body is the README's code.
func Example() {
	url, stop := RunEmbeddedServer() // in production: your NATS servers' URL
	defer stop()
	if err := quickStart(context.Background(), url); err != nil {
		fmt.Println(err)
	}
	// Output:
	// working with a fencing token: true
}

// quickStart is the README's Quick start.
func quickStart(ctx context.Context, url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	// MaxAge 10s, History 1, memory storage, expiry markers and per-message TTLs on.
	kv, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx,
		natskvlease.BucketConfig{Bucket: "leases", TTL: 10 * time.Second})
	if err != nil {
		return err
	}

	hostname, _ := os.Hostname()
	lease := natskvlease.NewLease(kv, natskvlease.LeaseConfig{
		Key:   "nightly-report",
		Value: []byte(hostname + "/instance-1"), // unique per holder
		Callbacks: natskvlease.LeaseCallbacks{
			OnLost: func() { log.Print("lost the lease") },
		},
	})
	ok, err := lease.RunCamping(ctx) // acquire once, renew in the background
	if err != nil {
		return err
	}
	if ok {
		defer lease.StopCamping()           // releases the lease
		doWork(lease.Done(), lease.Token()) // stop when Done closes; fence with Token
	}
	return nil
}

// doWork stands for the work done under the lease: it must stop when
// done closes, and hand token to the resources it writes.
func doWork(done <-chan struct{}, token uint64) {
	select {
	case <-done:
		fmt.Println("lease lost before the work began")
	default:
		fmt.Println("working with a fencing token:", token > 0)
	}
}

// Acquire and Release by hand: Acquire makes one attempt and reports
// (false, nil) when another holder has the key.
func ExampleLease() {
	url, stop := RunEmbeddedServer()
	defer stop()
	ctx := context.Background()
	kv, closeConn, err := openBucket(ctx, url, "locks")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer closeConn()

	a := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "job", Value: []byte("a"), TTL: 5 * time.Second})
	b := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "job", Value: []byte("b"), TTL: 5 * time.Second})

	ok, err := a.Acquire(ctx)
	fmt.Println("a acquired:", ok, err)
	ok, err = b.Acquire(ctx)
	fmt.Println("b acquired:", ok, err)

	fmt.Println("a released:", a.Release(ctx))
	err = a.Release(ctx) // a second Release: nothing is held
	fmt.Println("again:", errors.Is(err, natskvlease.ErrLeaseNotHeld))

	ok, err = b.Acquire(ctx)
	fmt.Println("b acquired:", ok, err)
	fmt.Println("b released:", b.Release(ctx))
	// Output:
	// a acquired: true <nil>
	// b acquired: false <nil>
	// a released: <nil>
	// again: true
	// b acquired: true <nil>
	// b released: <nil>
}

// RunCamping acquires once and renews on a timer until StopCamping (or
// the end of its context), which releases the lease.
func ExampleLease_RunCamping() {
	url, stop := RunEmbeddedServer()
	defer stop()
	ctx := context.Background()
	kv, closeConn, err := openBucket(ctx, url, "leases")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer closeConn()

	lease := natskvlease.NewLease(kv, natskvlease.LeaseConfig{
		Key:   "cleanup",
		Value: []byte("worker-1"),
		TTL:   2 * time.Second,
		Callbacks: natskvlease.LeaseCallbacks{
			OnReleased: func() { fmt.Println("released") },
		},
	})
	ok, err := lease.RunCamping(ctx)
	if err != nil || !ok {
		fmt.Println("not acquired:", err)
		return
	}
	fmt.Println("held:", lease.IsHeld())
	lease.StopCamping()
	<-lease.Done()
	fmt.Println("held:", lease.IsHeld())
	// Output:
	// held: true
	// released
	// held: false
}

// AcquireWait blocks until the lease is free and acquired: here, until
// the first holder releases it.
func ExampleLease_AcquireWait() {
	url, stop := RunEmbeddedServer()
	defer stop()
	ctx := context.Background()
	kv, closeConn, err := openBucket(ctx, url, "leases")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer closeConn()

	first := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "shard-7", Value: []byte("first"), TTL: 5 * time.Second})
	if ok, err := first.Acquire(ctx); !ok || err != nil {
		fmt.Println("first not acquired:", err)
		return
	}
	second := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "shard-7", Value: []byte("second"), TTL: 5 * time.Second})
	acquired := make(chan error)
	go func() { acquired <- second.AcquireWait(ctx) }()

	_ = first.Release(ctx) // the waiter's watch sees the release at once
	fmt.Println("second acquired:", <-acquired)
	fmt.Println("tokens grow:", second.Token() > first.Token())
	_ = second.Release(ctx)
	// Output:
	// second acquired: <nil>
	// tokens grow: true
}

// A LeaseManager campaigns until stopped: it takes the key whenever it
// is free. Stop releases it, and another manager takes over.
func ExampleLeaseManager() {
	url, stop := RunEmbeddedServer()
	defer stop()
	ctx := context.Background()
	kv, closeConn, err := openBucket(ctx, url, "leader")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer closeConn()

	acquired := make(chan string, 2)
	manager := func(name string) *natskvlease.LeaseManager {
		return natskvlease.NewLeaseManager(kv, natskvlease.LeaseConfig{
			Key:       "scheduler",
			Value:     []byte(name),
			TTL:       2 * time.Second,
			Callbacks: natskvlease.LeaseCallbacks{OnAcquired: func() { acquired <- name }},
		})
	}
	a, b := manager("a"), manager("b")
	if err := a.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("leader:", <-acquired)
	if err := b.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	_ = a.Stop(ctx) // releases: b takes over
	fmt.Println("leader:", <-acquired)
	_ = b.Stop(ctx)
	// Output:
	// leader: a
	// leader: b
}

// GetOrCreateBucket creates a lease bucket, or opens it if it exists
// with the same TTL, and refuses one with another TTL.
func ExampleKVHelper_GetOrCreateBucket() {
	url, stop := RunEmbeddedServer()
	defer stop()
	ctx := context.Background()
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println(err)
		return
	}

	helper := natskvlease.NewKVHelper(js, nil)
	kv, err := helper.GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "leases", TTL: 30 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	st, err := kv.Status(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("bucket:", kv.Bucket(), "TTL:", st.TTL())

	_, err = helper.GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "leases", TTL: 10 * time.Second})
	fmt.Println("another TTL refused:", errors.Is(err, natskvlease.ErrBucketMismatch))
	// Output:
	// bucket: leases TTL: 30s
	// another TTL refused: true
}

// Retry repeats an operation while its error is transient (a timeout,
// no responders during a leader change, ...), with backoff, and returns
// other errors at once.
func ExampleRetry() {
	ctx := context.Background()
	attempts := 0
	n, err := natskvlease.Retry(ctx, func() (int, error) {
		attempts++
		if attempts < 3 {
			return 0, nats.ErrTimeout // transient: tried again
		}
		return 42, nil
	})
	fmt.Println(n, err, "after", attempts, "attempts")

	_, err = natskvlease.Retry(ctx, func() (int, error) {
		return 0, jetstream.ErrBucketNotFound // not transient: returned at once
	})
	fmt.Println(err)
	// Output:
	// 42 <nil> after 3 attempts
	// nats: bucket not found
}

// RunEmbeddedServer starts a nats-server with JetStream inside this
// process, on a random loopback port, with its store in a temporary
// directory, and returns its URL and a function that stops it. The
// examples use it so that they run anywhere; real programs connect to
// their own servers.
func RunEmbeddedServer() (url string, stop func()) {
	dir, err := os.MkdirTemp("", "natskvlease-example-*")
	if err != nil {
		panic(err)
	}
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1, // a random free port
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		panic(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("nats-server did not start")
	}
	return srv.ClientURL(), func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
}

// openBucket connects to url and opens (or creates) a lease bucket with
// a 10s TTL; closeConn closes the connection.
func openBucket(ctx context.Context, url, bucket string) (kv jetstream.KeyValue, closeConn func(), err error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		kv, err = natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx,
			natskvlease.BucketConfig{Bucket: bucket, TTL: 10 * time.Second})
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return kv, nc.Close, nil
}
