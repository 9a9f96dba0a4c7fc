package leadelect_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/embedded"
	"github.com/natskvlease/natskvlease/leadelect"
)

// exampleServer starts an embedded nats-server with JetStream and
// returns a JetStream handle on a connection to it, and a function that
// closes both. Real programs connect to their own servers.
func exampleServer() (jetstream.JetStream, func(), error) {
	url, stopServer, err := embedded.Start()
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(url)
	if err != nil {
		stopServer()
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		stopServer()
		return nil, nil, err
	}
	return js, func() { nc.Close(); stopServer() }, nil
}

// A candidate leads, does its work while its context lasts, and stops:
// ending Run's context releases leadership at once.
func ExampleElection_Run() {
	js, stop, err := exampleServer()
	if err != nil {
		fmt.Println(err)
		return
	}
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
	js, stop, err := exampleServer()
	if err != nil {
		fmt.Println(err)
		return
	}
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
