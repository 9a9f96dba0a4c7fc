package otelmetrics_test

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/metricstest"
	"github.com/natskvlease/natskvlease/metrics/otelmetrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newMetrics returns Metrics on an SDK MeterProvider with a manual
// reader, and a function that collects what it recorded.
func newMetrics(t *testing.T, opts ...otelmetrics.Option) (*otelmetrics.Metrics, func() map[string]metricdata.Metrics) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	m, err := otelmetrics.New(provider.Meter("natskvlease-test"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	collect := func() map[string]metricdata.Metrics {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		out := map[string]metricdata.Metrics{}
		for _, sm := range rm.ScopeMetrics {
			for _, md := range sm.Metrics {
				out[md.Name] = md
			}
		}
		return out
	}
	return m, collect
}

func attrs(kv ...string) attribute.Set {
	var list []attribute.KeyValue
	for i := 0; i < len(kv); i += 2 {
		list = append(list, attribute.String(kv[i], kv[i+1]))
	}
	return attribute.NewSet(list...)
}

// sum returns the value of counter or updowncounter name at the
// attribute set; zero if it has no such point.
func sum(t *testing.T, got map[string]metricdata.Metrics, name string, set attribute.Set) int {
	t.Helper()
	md, ok := got[name]
	if !ok {
		return 0
	}
	s, ok := md.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T, not a Sum[int64]", name, md.Data)
	}
	for _, p := range s.DataPoints {
		if p.Attributes.Equals(&set) {
			return int(p.Value)
		}
	}
	return 0
}

// histogram returns the count and sum of histogram name at the attribute
// set, and its bounds.
func histogram(t *testing.T, got map[string]metricdata.Metrics, name string, set attribute.Set) (count int, total float64, bounds []float64) {
	t.Helper()
	md, ok := got[name]
	if !ok {
		return 0, 0, nil
	}
	h, ok := md.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T, not a Histogram[float64]", name, md.Data)
	}
	for _, p := range h.DataPoints {
		if p.Attributes.Equals(&set) {
			return int(p.Count), p.Sum, p.Bounds
		}
	}
	return 0, 0, nil
}

// TestScript checks every instrument against the events of a scripted
// run against a real server (metricstest.Run), and the numbers the
// script makes certain.
func TestScript(t *testing.T) {
	m, collect := newMetrics(t)
	want := metricstest.Count(metricstest.Run(t, m))
	got := collect()
	none := attribute.NewSet()

	check := func(what string, got, want int) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", what, got, want)
		}
	}
	for _, op := range []string{natskvlease.OpAcquire, natskvlease.OpRenew, natskvlease.OpRelease} {
		for _, r := range []string{natskvlease.ResultOK, natskvlease.ResultTaken, natskvlease.ResultError} {
			check("operations{"+op+","+r+"}", sum(t, got, "natskvlease.operations", attrs("op", op, "result", r)), want.Ops[[2]string{op, r}])
		}
		n, total, bounds := histogram(t, got, "natskvlease.operation.duration", attrs("op", op))
		check("operation.duration{"+op+"} count", n, want.OpDurations[op])
		if math.Abs(total-want.OpSeconds[op]) > 1e-9 {
			t.Errorf("operation.duration{%s} sum = %v, want %v", op, total, want.OpSeconds[op])
		}
		if n > 0 && !slices.Equal(bounds, otelmetrics.DurationBuckets) {
			t.Errorf("operation.duration bounds = %v, want the advised %v", bounds, otelmetrics.DurationBuckets)
		}
	}
	for _, c := range []natskvlease.LossCause{natskvlease.CauseTakenOver, natskvlease.CauseDeadline, natskvlease.CauseConnectionClosed, natskvlease.CauseRefused} {
		check("losses{"+string(c)+"}", sum(t, got, "natskvlease.losses", attrs("cause", string(c))), want.Losses[c])
	}
	check("acquisitions", sum(t, got, "natskvlease.acquisitions", none), want.Acquisitions)
	check("releases", sum(t, got, "natskvlease.releases", none), want.Releases)
	check("held", sum(t, got, "natskvlease.held", none), want.Held)
	check("leader.changes", sum(t, got, "natskvlease.leader.changes", none), want.LeaderChange)
	n, _, _ := histogram(t, got, "natskvlease.renewal.margin", none)
	check("renewal.margin count", n, want.Renewals)
	n, _, _ = histogram(t, got, "natskvlease.handoff.duration", none)
	check("handoff.duration count", n, want.Handoffs)
	n, total, _ := histogram(t, got, "natskvlease.leader.term.duration", none)
	check("leader.term.duration count", n, want.Terms)
	if math.Abs(total-want.TermSeconds) > 1e-9 || total <= 0 {
		t.Errorf("leader.term.duration sum = %v, want %v (> 0)", total, want.TermSeconds)
	}

	// What the script makes certain, whatever else happened.
	check("operations{acquire,taken}", sum(t, got, "natskvlease.operations", attrs("op", "acquire", "result", "taken")), 2)
	check("operations{renew,taken}", sum(t, got, "natskvlease.operations", attrs("op", "renew", "result", "taken")), 1)
	check("losses{taken_over}", sum(t, got, "natskvlease.losses", attrs("cause", "taken_over")), 1)
	check("acquisitions", sum(t, got, "natskvlease.acquisitions", none), 4) // a, b, the lock, the leader
	check("releases", sum(t, got, "natskvlease.releases", none), 3)         // a, the lock, the leader
	check("held", sum(t, got, "natskvlease.held", none), 0)
	check("leader.changes", sum(t, got, "natskvlease.leader.changes", none), 1)
	n, _, _ = histogram(t, got, "natskvlease.handoff.duration", none)
	check("handoff.duration count", n, 1)

	// Kinds and units.
	if s, ok := got["natskvlease.held"].Data.(metricdata.Sum[int64]); !ok || s.IsMonotonic {
		t.Errorf("natskvlease.held is %T (monotonic %v), want a non-monotonic sum", got["natskvlease.held"].Data, s.IsMonotonic)
	}
	for _, name := range []string{"natskvlease.operation.duration", "natskvlease.renewal.margin", "natskvlease.handoff.duration", "natskvlease.leader.term.duration"} {
		if u := got[name].Unit; u != "s" {
			t.Errorf("%s unit %q, want s", name, u)
		}
	}
	for name, md := range got {
		if md.Description == "" {
			t.Errorf("%s has no description", name)
		}
	}
}

// TestKeyAttribute: with WithKeyAttribute, held says which keys are
// held, and the other instruments carry the key too.
func TestKeyAttribute(t *testing.T) {
	m, collect := newMetrics(t, otelmetrics.WithKeyAttribute())
	for _, e := range []natskvlease.Event{
		{Kind: natskvlease.EventAcquired, Key: "a"},
		{Kind: natskvlease.EventAcquired, Key: "b"},
		{Kind: natskvlease.EventReleased, Key: "a"},
		{Kind: natskvlease.EventLost, Key: "b", Cause: natskvlease.CauseDeadline},
		{Kind: natskvlease.EventAcquired, Key: "b"},
		{Kind: natskvlease.EventOperation, Key: "b", Op: natskvlease.OpRenew, Result: natskvlease.ResultOK, Duration: time.Millisecond},
	} {
		m.Record(e)
	}
	got := collect()
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"held{a}", sum(t, got, "natskvlease.held", attrs("key", "a")), 0},
		{"held{b}", sum(t, got, "natskvlease.held", attrs("key", "b")), 1},
		{"acquisitions{b}", sum(t, got, "natskvlease.acquisitions", attrs("key", "b")), 2},
		{"losses{deadline,b}", sum(t, got, "natskvlease.losses", attrs("cause", "deadline", "key", "b")), 1},
		{"operations{renew,ok,b}", sum(t, got, "natskvlease.operations", attrs("op", "renew", "result", "ok", "key", "b")), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
		}
	}
}

// TestUnknownValues: an op, result or cause this version does not know
// is counted under its own attribute value, not dropped.
func TestUnknownValues(t *testing.T) {
	m, collect := newMetrics(t)
	m.Record(natskvlease.Event{Kind: natskvlease.EventOperation, Op: "inspect", Result: natskvlease.ResultOK})
	m.Record(natskvlease.Event{Kind: natskvlease.EventLost, Cause: "meteor"})
	got := collect()
	if n := sum(t, got, "natskvlease.operations", attrs("op", "inspect", "result", "ok")); n != 1 {
		t.Errorf("operations{inspect,ok} = %d, want 1", n)
	}
	if n := sum(t, got, "natskvlease.losses", attrs("cause", "meteor")); n != 1 {
		t.Errorf("losses{meteor} = %d, want 1", n)
	}
}

func TestNilMeter(t *testing.T) {
	if _, err := otelmetrics.New(nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
}

// TestRecordAllocs: without the key attribute, recording on the SDK
// allocates nothing once a stream exists.
func TestRecordAllocs(t *testing.T) {
	m, _ := newMetrics(t)
	for _, e := range []natskvlease.Event{
		{Kind: natskvlease.EventRenewed, Key: "k", Left: 2 * time.Second},
		{Kind: natskvlease.EventOperation, Key: "k", Op: natskvlease.OpRenew, Result: natskvlease.ResultOK, Duration: time.Millisecond},
		{Kind: natskvlease.EventLost, Key: "k", Cause: natskvlease.CauseDeadline},
	} {
		m.Record(e) // the first measurement of a stream allocates it
		if n := testing.AllocsPerRun(100, func() { m.Record(e) }); n > 0 {
			t.Errorf("Record(%+v): %v allocations, want 0", e, n)
		}
	}
}
