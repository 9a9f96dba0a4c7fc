package leadelect_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/leadelect"
)

// The README's leadelect section: campaign, and work while leading.
func Example() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	stopCampaign = cancel
	err := readmeElection(ctx, js, "node-1")
	fmt.Println("Run returned:", err)
	// Output:
	// scheduling with a fencing token: true
	// Run returned: context canceled
}

// readmeElection is the README's leadelect code.
func readmeElection(ctx context.Context, js jetstream.JetStream, hostname string) error {
	e, err := leadelect.New(js, leadelect.Config{Key: "scheduler", ID: hostname, TTL: 10 * time.Second})
	if err != nil {
		return err
	}
	err = e.Run(ctx, leadelect.Callbacks{
		OnStartedLeading: func(ctx context.Context) { // ctx ends when leadership ends
			token, _ := leadelect.TokenFromContext(ctx)
			schedule(ctx, token)
		},
		OnStoppedLeading: func() { log.Print("no longer leading") },
		OnNewLeader:      func(id string) { log.Print("leader: ", id) },
	})
	return err
}

// stopCampaign ends the example's campaign once it has led.
var stopCampaign context.CancelFunc

func schedule(ctx context.Context, token uint64) {
	fmt.Println("scheduling with a fencing token:", token > 0)
	stopCampaign() // a real scheduler works until ctx ends
	<-ctx.Done()
}

// A candidate leads, does its work while its context lasts, and stops:
// ending Run's context releases leadership at once.
func ExampleElection_Run() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()

	e, err := leadelect.New(js, leadelect.Config{Key: "scheduler", ID: "node-1", TTL: 2 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = e.Run(ctx, leadelect.Callbacks{
		OnStartedLeading: func(ctx context.Context) {
			token, _ := leadelect.TokenFromContext(ctx)
			fmt.Println("leading, with a fencing token:", token > 0)
			cancel() // the work is done; a real leader works until ctx ends
			<-ctx.Done()
		},
		OnStoppedLeading: func() { fmt.Println("stopped leading") },
	})
	fmt.Println("Run returned:", err)
	// Output:
	// leading, with a fencing token: true
	// stopped leading
	// Run returned: context canceled
}

// Observe follows an election, here from an Election that does not
// campaign itself: the current state first, then every change.
func ExampleElection_Observe() {
	js, stop := RunEmbeddedServer() // in production: jetstream.New on your connection
	defer stop()

	watcher, err := leadelect.New(js, leadelect.Config{Key: "scheduler", ID: "dashboard", TTL: 2 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	node, err := leadelect.New(js, leadelect.Config{Key: "scheduler", ID: "node-1", TTL: 2 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := watcher.Observe(ctx)
	show := func() {
		if info := <-changes; info.Vacant() {
			fmt.Println("no leader")
		} else {
			fmt.Println("leader:", info.ID)
		}
	}
	show() // the current state

	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- node.Run(runCtx, leadelect.Callbacks{}) }()
	show()
	stopRun() // node-1 stops and releases at once
	<-done
	show()
	// Output:
	// no leader
	// leader: node-1
	// no leader
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
	dir, err := os.MkdirTemp("", "leadelect-example-*")
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
