package prommetrics_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/metrics/prommetrics"
)

// One Metrics serves every lease, lock client and election of a
// process; promhttp serves what they report.
func Example() {
	js, stop, err := exampleJetStream()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()

	m, err := prommetrics.New(prometheus.DefaultRegisterer)
	if err != nil {
		fmt.Println(err)
		return
	}

	// Locks report through dlock.WithMetrics...
	locks, err := dlock.New(ctx, js, dlock.WithTTL(30*time.Second), dlock.WithMetrics(m))
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
	_ = lock.Unlock(ctx)

	// ...a Lease through LeaseConfig.Metrics (and an election through
	// leadelect.Config.Metrics).
	kv, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{Bucket: "jobs", TTL: 30 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	lease := natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: "nightly", Value: []byte("worker-1"), Metrics: m})
	if ok, err := lease.Acquire(ctx); !ok || err != nil {
		fmt.Println("not acquired:", err)
		return
	}

	// A program serves the handler: http.Handle("/metrics",
	// promhttp.Handler()). Here, one scrape without a listener.
	scrape := httptest.NewRecorder()
	promhttp.Handler().ServeHTTP(scrape, httptest.NewRequest("GET", "/metrics", nil))
	for line := range strings.Lines(scrape.Body.String()) {
		if strings.HasPrefix(line, "natskvlease_acquisitions_total") ||
			strings.HasPrefix(line, "natskvlease_held") ||
			strings.HasPrefix(line, `natskvlease_operations_total{op="acquire"`) {
			fmt.Print(line)
		}
	}
	_ = lease.Release(ctx)
	// Output:
	// natskvlease_acquisitions_total 2
	// natskvlease_held 1
	// natskvlease_operations_total{op="acquire",result="error"} 0
	// natskvlease_operations_total{op="acquire",result="ok"} 2
	// natskvlease_operations_total{op="acquire",result="taken"} 0
}

// exampleJetStream starts an in-process nats-server with JetStream and
// connects to it; stop closes both. Real programs connect to their own
// servers: nats.Connect(url), then jetstream.New.
func exampleJetStream() (js jetstream.JetStream, stop func(), err error) {
	dir, err := os.MkdirTemp("", "prommetrics-example-*")
	if err != nil {
		return nil, nil, err
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, nil, err
	}
	srv.Start()
	stopServer := func() { srv.Shutdown(); srv.WaitForShutdown(); _ = os.RemoveAll(dir) }
	if !srv.ReadyForConnections(10 * time.Second) {
		stopServer()
		return nil, nil, fmt.Errorf("nats-server did not start")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err == nil {
		js, err = jetstream.New(nc)
	}
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		stopServer()
		return nil, nil, err
	}
	return js, func() { nc.Close(); stopServer() }, nil
}
