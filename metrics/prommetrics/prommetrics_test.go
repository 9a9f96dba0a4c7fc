package prommetrics_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/metricstest"
	"github.com/natskvlease/natskvlease/metrics/prommetrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// series finds the series of family name whose labels are exactly want.
func series(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) *dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(want) {
				continue
			}
			for _, l := range m.GetLabel() {
				if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return nil
}

func counter(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) int {
	t.Helper()
	return int(series(t, reg, name, labels).GetCounter().GetValue())
}

func histogram(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (count int, sum float64) {
	t.Helper()
	h := series(t, reg, name, labels).GetHistogram()
	return int(h.GetSampleCount()), h.GetSampleSum()
}

// TestScript checks every metric against the events of a scripted run
// against a real server (metricstest.Run), and the numbers the script
// makes certain.
func TestScript(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := prommetrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	want := metricstest.Count(metricstest.Run(t, m))

	check := func(what string, got, want int) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", what, got, want)
		}
	}
	for _, op := range []string{natskvlease.OpAcquire, natskvlease.OpRenew, natskvlease.OpRelease} {
		for _, r := range []string{natskvlease.ResultOK, natskvlease.ResultTaken, natskvlease.ResultError} {
			check("operations_total{"+op+","+r+"}",
				counter(t, reg, "natskvlease_operations_total", map[string]string{"op": op, "result": r}),
				want.Ops[[2]string{op, r}])
		}
		n, sum := histogram(t, reg, "natskvlease_operation_duration_seconds", map[string]string{"op": op})
		check("operation_duration_seconds{"+op+"} count", n, want.OpDurations[op])
		if diff := sum - want.OpSeconds[op]; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("operation_duration_seconds{%s} sum = %v, want %v", op, sum, want.OpSeconds[op])
		}
	}
	for _, c := range []natskvlease.LossCause{natskvlease.CauseTakenOver, natskvlease.CauseDeadline, natskvlease.CauseConnectionClosed, natskvlease.CauseRefused} {
		check("losses_total{"+string(c)+"}",
			counter(t, reg, "natskvlease_losses_total", map[string]string{"cause": string(c)}), want.Losses[c])
	}
	check("acquisitions_total", counter(t, reg, "natskvlease_acquisitions_total", nil), want.Acquisitions)
	check("releases_total", counter(t, reg, "natskvlease_releases_total", nil), want.Releases)
	check("leader_changes_total", counter(t, reg, "natskvlease_leader_changes_total", nil), want.LeaderChange)
	check("held", int(series(t, reg, "natskvlease_held", nil).GetGauge().GetValue()), want.Held)
	n, _ := histogram(t, reg, "natskvlease_renewal_margin_seconds", nil)
	check("renewal_margin_seconds count", n, want.Renewals)
	n, _ = histogram(t, reg, "natskvlease_handoff_seconds", nil)
	check("handoff_seconds count", n, want.Handoffs)
	n, sum := histogram(t, reg, "natskvlease_leader_term_seconds", nil)
	check("leader_term_seconds count", n, want.Terms)
	if sum <= 0 {
		t.Errorf("leader_term_seconds sum = %v, want > 0", sum)
	}

	// What the script makes certain, whatever else happened.
	check("operations_total{acquire,taken}", counter(t, reg, "natskvlease_operations_total", map[string]string{"op": "acquire", "result": "taken"}), 2)
	check("operations_total{renew,taken}", counter(t, reg, "natskvlease_operations_total", map[string]string{"op": "renew", "result": "taken"}), 1)
	check("losses_total{taken_over}", counter(t, reg, "natskvlease_losses_total", map[string]string{"cause": "taken_over"}), 1)
	check("held", int(series(t, reg, "natskvlease_held", nil).GetGauge().GetValue()), 0)
	check("leader_changes_total", counter(t, reg, "natskvlease_leader_changes_total", nil), 1)
	check("acquisitions_total", counter(t, reg, "natskvlease_acquisitions_total", nil), 4) // a, b, the lock, the leader
	check("releases_total", counter(t, reg, "natskvlease_releases_total", nil), 3)         // a, the lock, the leader
	n, _ = histogram(t, reg, "natskvlease_handoff_seconds", nil)
	check("handoff_seconds count", n, 1)
	n, _ = histogram(t, reg, "natskvlease_leader_term_seconds", nil)
	check("leader_term_seconds count", n, 1)

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestKeyLabel: with WithKeyLabel, held says which keys are held, and the
// other metrics carry the key too.
func TestKeyLabel(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := prommetrics.New(reg, prommetrics.WithKeyLabel())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []natskvlease.Event{
		{Kind: natskvlease.EventAcquired, Key: "a"},
		{Kind: natskvlease.EventAcquired, Key: "b"},
		{Kind: natskvlease.EventAcquired, Key: "c"},
		{Kind: natskvlease.EventReleased, Key: "a"},
		{Kind: natskvlease.EventLost, Key: "c", Cause: natskvlease.CauseDeadline},
		{Kind: natskvlease.EventOperation, Key: "b", Op: natskvlease.OpRenew, Result: natskvlease.ResultOK, Duration: time.Millisecond},
	} {
		m.Record(e)
	}
	const want = `
# HELP natskvlease_held Leases this process holds now (locks and leaderships included).
# TYPE natskvlease_held gauge
natskvlease_held{key="a"} 0
natskvlease_held{key="b"} 1
natskvlease_held{key="c"} 0
# HELP natskvlease_losses_total Holdings that ended without a release, by cause: taken_over, deadline (the safety deadline passed before a renewal was answered), connection_closed, refused.
# TYPE natskvlease_losses_total counter
natskvlease_losses_total{cause="deadline",key="c"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "natskvlease_held", "natskvlease_losses_total"); err != nil {
		t.Error(err)
	}
	if got := counter(t, reg, "natskvlease_operations_total", map[string]string{"op": "renew", "result": "ok", "key": "b"}); got != 1 {
		t.Errorf("operations_total{renew,ok,b} = %d, want 1", got)
	}
}

// TestUnknownValues: an op, result or cause this version does not know
// is counted under its own label value, not dropped.
func TestUnknownValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := prommetrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Record(natskvlease.Event{Kind: natskvlease.EventOperation, Op: "inspect", Result: natskvlease.ResultOK})
	m.Record(natskvlease.Event{Kind: natskvlease.EventLost, Cause: "meteor"})
	if got := counter(t, reg, "natskvlease_operations_total", map[string]string{"op": "inspect", "result": "ok"}); got != 1 {
		t.Errorf("operations_total{inspect,ok} = %d, want 1", got)
	}
	if got := counter(t, reg, "natskvlease_losses_total", map[string]string{"cause": "meteor"}); got != 1 {
		t.Errorf("losses_total{meteor} = %d, want 1", got)
	}
}

// TestRegisterConflict: a second New on one registry fails and leaves
// nothing of its own registered; another namespace
// tells two apart.
func TestRegisterConflict(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := prommetrics.New(reg); err != nil {
		t.Fatal(err)
	}
	_, err := prommetrics.New(reg)
	var already prometheus.AlreadyRegisteredError
	if !errors.As(err, &already) {
		t.Fatalf("a second New on one registry: %v, want an AlreadyRegisteredError", err)
	}
	if _, err := prommetrics.New(reg, prommetrics.WithNamespace("other")); err != nil {
		t.Fatalf("New with another namespace: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "natskvlease_held", "other_held"); err != nil || n != 2 {
		t.Fatalf("held series: %d, %v; want 2", n, err)
	}
}

// TestRecordAllocs: without the key label, recording allocates nothing.
func TestRecordAllocs(t *testing.T) {
	m, err := prommetrics.New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []natskvlease.Event{
		{Kind: natskvlease.EventRenewed, Key: "k", Left: 2 * time.Second},
		{Kind: natskvlease.EventOperation, Key: "k", Op: natskvlease.OpRenew, Result: natskvlease.ResultOK, Duration: time.Millisecond},
		{Kind: natskvlease.EventLost, Key: "k", Cause: natskvlease.CauseDeadline},
	} {
		if n := testing.AllocsPerRun(100, func() { m.Record(e) }); n != 0 {
			t.Errorf("Record(%+v): %v allocations, want 0", e, n)
		}
	}
}
