// Package embedded starts an in-process nats-server with JetStream, for
// demos and examples that must run on a machine with nothing but Go.
package embedded

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Start runs a nats-server with JetStream on a random loopback port,
// storing JetStream data in a new temporary directory. stop shuts the
// server down, waits for it, and removes the directory.
func Start() (url string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "natskvlease-embedded-*")
	if err != nil {
		return "", nil, err
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "embedded",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
		return "", nil, fmt.Errorf("embedded nats-server did not start within 10s")
	}
	stop = func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
	return srv.ClientURL(), stop, nil
}
