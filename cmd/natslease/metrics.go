package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/metrics/prommetrics"
)

// metricsServer serves the process's lease metrics at /metrics, in the
// Prometheus text format, for as long as a lock or an election runs.
type metricsServer struct {
	metrics natskvlease.Metrics
	srv     *http.Server
	done    chan struct{}
}

// serveMetrics listens on addr (host:port) and serves /metrics there.
// An empty addr serves nothing and returns a nil server, whose methods
// do nothing.
func serveMetrics(addr string) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := prommetrics.New(reg, prommetrics.WithKeyLabel())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s := &metricsServer{metrics: m, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener failed; the lock goes on without metrics
		}
	}()
	return s, nil
}

// sink is the Metrics to give the library: nil when nothing is served.
func (s *metricsServer) sink() natskvlease.Metrics {
	if s == nil {
		return nil
	}
	return s.metrics
}

// close stops serving.
func (s *metricsServer) close() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}
