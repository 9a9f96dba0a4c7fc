package otelmetrics_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/metrics/otelmetrics"
)

// One Metrics, from the process's MeterProvider, serves every lease,
// lock client and election.
func Example() {
	js, stop, err := exampleJetStream()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()

	// A program gives the provider its exporter's reader (OTLP, or the
	// Prometheus exporter); a manual reader lets this example look.
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)
	m, err := otelmetrics.New(provider.Meter("github.com/natskvlease/natskvlease"))
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
	defer lease.Release(ctx)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			switch md.Name {
			case "natskvlease.acquisitions", "natskvlease.releases", "natskvlease.held":
				fmt.Println(md.Name, md.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
			}
		}
	}
	// Unordered output:
	// natskvlease.acquisitions 2
	// natskvlease.releases 1
	// natskvlease.held 1
}

// exampleJetStream starts an in-process nats-server with JetStream and
// connects to it; stop closes both. Real programs connect to their own
// servers: nats.Connect(url), then jetstream.New.
func exampleJetStream() (js jetstream.JetStream, stop func(), err error) {
	dir, err := os.MkdirTemp("", "otelmetrics-example-*")
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
