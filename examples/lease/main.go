// Command lease shows two processes' worth of leases handing a job over,
// against a nats-server embedded in this program: no setup needed.
//
//	go run ./examples/lease
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, stop, err := startServer()
	if err != nil {
		return err
	}
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Printf("%7.1fms  %s\n", float64(time.Since(start).Microseconds())/1000, fmt.Sprintf(format, args...))
	}

	// Two "replicas" of a service, each with its own connection.
	open := func() (jetstream.KeyValue, *nats.Conn, error) {
		nc, err := nats.Connect(url)
		if err != nil {
			return nil, nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, nil, err
		}
		kv, err := natskvlease.NewKVHelper(js, logger).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "jobs", TTL: 2 * time.Second})
		return kv, nc, err
	}
	kvA, ncA, err := open()
	if err != nil {
		return err
	}
	defer ncA.Close()
	kvB, ncB, err := open()
	if err != nil {
		return err
	}
	defer ncB.Close()

	a := natskvlease.NewLease(kvA, natskvlease.LeaseConfig{Key: "nightly-report", Value: []byte("replica-a"), Logger: logger})
	if ok, err := a.RunCamping(ctx); !ok {
		return fmt.Errorf("replica-a could not acquire: %v", err)
	}
	say("replica-a holds the lease, fencing token %d, TTL %v", a.Token(), a.TTL())

	acquired := make(chan struct{})
	b := natskvlease.NewLeaseManager(kvB, natskvlease.LeaseConfig{
		Key: "nightly-report", Value: []byte("replica-b"), Logger: logger,
		Callbacks: natskvlease.LeaseCallbacks{OnAcquired: func() { close(acquired) }},
	})
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer func() { _ = b.Stop(context.Background()) }()
	time.Sleep(500 * time.Millisecond) // let replica-b start watching, for the demo's sake
	say("replica-b is waiting; replica-a renews every TTL/3 and stays the holder: a=%v b=%v", a.IsHeld(), b.IsHeld())

	released := time.Now()
	if err := a.Release(ctx); err != nil {
		return err
	}
	<-acquired
	say("replica-a released; replica-b acquired %v later through the key's watch, token %d", time.Since(released).Round(10*time.Microsecond), b.Token())
	return nil
}

// startServer runs a nats-server with JetStream inside this program, on
// a random loopback port, storing its data in a temporary directory. In
// production you connect to your NATS servers instead
// (nats.Connect(nats.DefaultURL) or your cluster's URLs).
func startServer() (url string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "natskvlease-example-*")
	if err != nil {
		return "", nil, err
	}
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		_ = os.RemoveAll(dir)
		return "", nil, errors.New("nats-server did not start within 10s")
	}
	return srv.ClientURL(), func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}, nil
}
