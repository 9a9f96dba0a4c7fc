package dlock_test

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

	"github.com/natskvlease/natskvlease/dlock"
)

// The README's dlock section: Do runs a function under the lock, and
// TryLock names the holder of a lock it cannot take.
func Example() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()
	if err := readmeLocks(context.Background(), js); err != nil {
		fmt.Println(err)
	}
	// Output:
	// writing the report with a fencing token: true
}

// readmeLocks is the README's dlock code.
func readmeLocks(ctx context.Context, js jetstream.JetStream) error {
	locks, err := dlock.New(ctx, js, dlock.WithTTL(10*time.Second))
	if err != nil {
		return err
	}
	defer locks.Close(ctx)

	err = locks.Do(ctx, "reports.daily", func(ctx context.Context, token uint64) error {
		return writeReport(ctx, token) // ctx ends if the lock is lost
	})
	if err != nil {
		return err
	}

	lock, err := locks.TryLock(ctx, "migrations")
	var locked *dlock.LockedError
	if errors.As(err, &locked) { // errors.Is(err, dlock.ErrLocked) too
		log.Printf("migrations are locked by %s on %s", locked.Holder.Owner, locked.Holder.Hostname)
		return nil
	} else if err != nil {
		return err
	}
	defer lock.Unlock(ctx)
	return nil
}

func writeReport(ctx context.Context, token uint64) error {
	fmt.Println("writing the report with a fencing token:", token > 0)
	return ctx.Err()
}

func ExampleClient_Lock() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()
	ctx := context.Background()

	locks, err := dlock.New(ctx, js, dlock.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer locks.Close(ctx)

	lock, err := locks.Lock(ctx, "reports.daily")
	if err != nil {
		fmt.Println(err)
		return
	}
	// Work under lock.Context(): it ends if the lock is lost. Hand the
	// fencing token to the resource so that it can refuse stale holders.
	fmt.Println("holding", lock.Key(), "with a token:", lock.Token() > 0)
	if err := lock.Unlock(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Println("context ended on unlock:", lock.Context().Err() != nil)
	// Output:
	// holding reports.daily with a token: true
	// context ended on unlock: true
}

func ExampleClient_Do() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()
	ctx := context.Background()

	locks, err := dlock.New(ctx, js, dlock.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer locks.Close(ctx)

	err = locks.Do(ctx, "migrations", func(ctx context.Context, token uint64) error {
		// ctx ends if the lock is lost; the token fences writes.
		fmt.Println("migrating under the lock")
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// migrating under the lock
	// done: <nil>
}

func ExampleClient_TryLock() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()
	ctx := context.Background()

	locks, err := dlock.New(ctx, js, dlock.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer locks.Close(ctx)

	first, err := locks.TryLock(ctx, "cron.cleanup")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer first.Unlock(ctx)

	_, err = locks.TryLock(ctx, "cron.cleanup")
	var locked *dlock.LockedError
	if errors.As(err, &locked) {
		fmt.Println("busy; held by the first lock:", locked.Holder.Owner == first.Owner())
		fmt.Println("same process:", locked.Holder.PID == os.Getpid())
	}
	// Output:
	// busy; held by the first lock: true
	// same process: true
}

// RunEmbeddedServer starts a nats-server with JetStream inside this
// process, on a random loopback port, with its store in a temporary
// directory, and returns a JetStream handle on a connection to it and a
// function that closes both. The examples use it so that they run
// anywhere; real programs connect to their own servers:
//
//	nc, err := nats.Connect(url)
//	js, err := jetstream.New(nc)
func RunEmbeddedServer() (js jetstream.JetStream, stop func()) {
	dir, err := os.MkdirTemp("", "dlock-example-*")
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
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	js, err = jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	return js, func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
}
