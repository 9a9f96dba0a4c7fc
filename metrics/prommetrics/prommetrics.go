// Package prommetrics reports natskvlease's lease events as Prometheus
// metrics: pass a *Metrics as natskvlease.LeaseConfig.Metrics,
// dlock.WithMetrics or leadelect.Config.Metrics.
//
// The metrics, with the default namespace "natskvlease":
//
//	natskvlease_operations_total{op,result}        counter
//	natskvlease_operation_duration_seconds{op}     histogram
//	natskvlease_acquisitions_total                 counter
//	natskvlease_losses_total{cause}                counter
//	natskvlease_releases_total                     counter
//	natskvlease_renewal_margin_seconds             histogram
//	natskvlease_handoff_seconds                    histogram
//	natskvlease_held                               gauge
//	natskvlease_leader_changes_total               counter
//	natskvlease_leader_term_seconds                histogram
//
// op is acquire, renew or release; result is ok, taken or error; cause is
// taken_over, deadline, connection_closed or refused (see the natskvlease
// constants of those names). WithKeyLabel adds a key label to every
// metric.
package prommetrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/buckets"
)

// DefaultNamespace prefixes every metric's name unless WithNamespace
// says otherwise.
const DefaultNamespace = "natskvlease"

// Default histogram buckets, in seconds.
var (
	// DefaultDurationBuckets suit one round trip to a NATS server, and a
	// handoff seen by a waiter: milliseconds, with a tail for timeouts.
	DefaultDurationBuckets = buckets.Duration()
	// DefaultMarginBuckets suit the time left on a lease's safety deadline
	// (nine tenths of a TTL of seconds to a minute) when a renewal lands.
	DefaultMarginBuckets = buckets.Margin()
	// DefaultTermBuckets suit how long a leader leads: seconds to a day.
	DefaultTermBuckets = buckets.Term()
)

// Option configures New.
type Option func(*options)

type options struct {
	namespace   string
	keyLabel    bool
	constLabels prometheus.Labels
	duration    []float64
	margin      []float64
	term        []float64
}

// WithNamespace replaces DefaultNamespace as the prefix of every metric's
// name; empty means no prefix.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithKeyLabel adds a key label, the lease's key (the lock's, the
// election's), to every metric: natskvlease_held{key} then says which
// keys this process holds. Each key seen becomes series of its own that
// live as long as the registry, so use it for a bounded set of keys
// (elections, a handful of locks), not for locks named per request.
// Recording costs a label lookup per event with it.
func WithKeyLabel() Option { return func(o *options) { o.keyLabel = true } }

// WithConstLabels adds labels with fixed values to every metric, e.g. to
// tell two Metrics in one registry apart.
func WithConstLabels(l prometheus.Labels) Option { return func(o *options) { o.constLabels = l } }

// WithDurationBuckets sets the buckets, in seconds, of
// operation_duration_seconds and handoff_seconds.
func WithDurationBuckets(b []float64) Option { return func(o *options) { o.duration = b } }

// WithMarginBuckets sets the buckets, in seconds, of
// renewal_margin_seconds; choose them for your TTLs.
func WithMarginBuckets(b []float64) Option { return func(o *options) { o.margin = b } }

// WithTermBuckets sets the buckets, in seconds, of leader_term_seconds.
func WithTermBuckets(b []float64) Option { return func(o *options) { o.term = b } }

// Fixed label values, in the order of the arrays below.
var (
	ops     = [...]string{natskvlease.OpAcquire, natskvlease.OpRenew, natskvlease.OpRelease}
	results = [...]string{natskvlease.ResultOK, natskvlease.ResultTaken, natskvlease.ResultError}
	causes  = [...]natskvlease.LossCause{natskvlease.CauseTakenOver, natskvlease.CauseDeadline, natskvlease.CauseConnectionClosed, natskvlease.CauseRefused}
)

func opIndex(op string) int {
	switch op {
	case natskvlease.OpAcquire:
		return 0
	case natskvlease.OpRenew:
		return 1
	case natskvlease.OpRelease:
		return 2
	}
	return -1
}

func resultIndex(r string) int {
	switch r {
	case natskvlease.ResultOK:
		return 0
	case natskvlease.ResultTaken:
		return 1
	case natskvlease.ResultError:
		return 2
	}
	return -1
}

func causeIndex(c natskvlease.LossCause) int {
	switch c {
	case natskvlease.CauseTakenOver:
		return 0
	case natskvlease.CauseDeadline:
		return 1
	case natskvlease.CauseConnectionClosed:
		return 2
	case natskvlease.CauseRefused:
		return 3
	}
	return -1
}

// Metrics is a natskvlease.Metrics that updates Prometheus collectors.
// It is safe for concurrent use; one Metrics may serve any number of
// leases, lock clients and elections.
type Metrics struct {
	keyLabel bool

	operations    *prometheus.CounterVec
	opDuration    *prometheus.HistogramVec
	acquisitions  *prometheus.CounterVec
	losses        *prometheus.CounterVec
	releases      *prometheus.CounterVec
	renewalMargin *prometheus.HistogramVec
	handoff       *prometheus.HistogramVec
	held          *prometheus.GaugeVec
	leaderChanges *prometheus.CounterVec
	leaderTerm    *prometheus.HistogramVec

	// Children resolved once, for the fixed label values, when there is
	// no key label: Record then neither hashes labels nor allocates.
	fixed struct {
		operations    [len(ops)][len(results)]prometheus.Counter
		opDuration    [len(ops)]prometheus.Observer
		losses        [len(causes)]prometheus.Counter
		acquisitions  prometheus.Counter
		releases      prometheus.Counter
		renewalMargin prometheus.Observer
		handoff       prometheus.Observer
		held          prometheus.Gauge
		leaderChanges prometheus.Counter
		leaderTerm    prometheus.Observer
	}
}

var _ natskvlease.Metrics = (*Metrics)(nil)

// New creates the metrics and registers them with reg (nil means
// prometheus.DefaultRegisterer). If one cannot be registered (say, a
// second New with the same namespace on one registry), none stays
// registered and the error says why.
func New(reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	o := options{
		namespace: DefaultNamespace,
		duration:  DefaultDurationBuckets,
		margin:    DefaultMarginBuckets,
		term:      DefaultTermBuckets,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	m := &Metrics{keyLabel: o.keyLabel}
	labels := func(names ...string) []string {
		if o.keyLabel {
			return append(names, "key")
		}
		return names
	}
	counter := func(name, help string, names ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: o.namespace, Name: name, Help: help, ConstLabels: o.constLabels,
		}, labels(names...))
	}
	histogram := func(name, help string, buckets []float64, names ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: o.namespace, Name: name, Help: help, ConstLabels: o.constLabels, Buckets: buckets,
		}, labels(names...))
	}
	m.operations = counter("operations_total",
		"Lease operations on the server (acquire, renew, release) by result: ok, taken (held by another, or found taken over), error.",
		"op", "result")
	m.opDuration = histogram("operation_duration_seconds",
		"How long lease operations took, from the first request to the answer or the failure.",
		o.duration, "op")
	m.acquisitions = counter("acquisitions_total",
		"Holdings begun: leases acquired.")
	m.losses = counter("losses_total",
		"Holdings that ended without a release, by cause: taken_over, deadline (the safety deadline passed before a renewal was answered), connection_closed, refused.",
		"cause")
	m.releases = counter("releases_total",
		"Holdings ended by a release.")
	m.renewalMargin = histogram("renewal_margin_seconds",
		"Time left on the lease's safety deadline when each renewal landed: how close the holding came to being lost.",
		o.margin)
	m.handoff = histogram("handoff_seconds",
		"Time from a waiter seeing the key vacant on its watch to holding it: the handoff as the waiter sees it.",
		o.duration)
	m.held = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: o.namespace, Name: "held", ConstLabels: o.constLabels,
		Help: "Leases this process holds now (locks and leaderships included).",
	}, labels())
	m.leaderChanges = counter("leader_changes_total",
		"New leaders seen by the elections' candidates in this process, their own terms included.")
	m.leaderTerm = histogram("leader_term_seconds",
		"How long each term of this process's candidates lasted, from acquiring leadership to stopping.",
		o.term)

	collectors := []prometheus.Collector{
		m.operations, m.opDuration, m.acquisitions, m.losses, m.releases,
		m.renewalMargin, m.handoff, m.held, m.leaderChanges, m.leaderTerm,
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("prommetrics: cannot register the metrics: %w", err)
		}
	}
	if !o.keyLabel {
		m.resolveFixed()
	}
	return m, nil
}

// resolveFixed creates every series with fixed label values, so that
// they are exported (at zero) before their first event, and keeps their
// children for Record.
func (m *Metrics) resolveFixed() {
	f := &m.fixed
	for i, op := range ops {
		for j, r := range results {
			f.operations[i][j] = m.operations.WithLabelValues(op, r)
		}
		f.opDuration[i] = m.opDuration.WithLabelValues(op)
	}
	for i, c := range causes {
		f.losses[i] = m.losses.WithLabelValues(string(c))
	}
	f.acquisitions = m.acquisitions.WithLabelValues()
	f.releases = m.releases.WithLabelValues()
	f.renewalMargin = m.renewalMargin.WithLabelValues()
	f.handoff = m.handoff.WithLabelValues()
	f.held = m.held.WithLabelValues()
	f.leaderChanges = m.leaderChanges.WithLabelValues()
	f.leaderTerm = m.leaderTerm.WithLabelValues()
}

// Record implements natskvlease.Metrics.
func (m *Metrics) Record(e natskvlease.Event) {
	if m.keyLabel {
		m.recordKeyed(e)
		return
	}
	f := &m.fixed
	switch e.Kind {
	case natskvlease.EventOperation:
		i, j := opIndex(e.Op), resultIndex(e.Result)
		if i < 0 || j < 0 { // a value this version does not know
			m.operations.WithLabelValues(e.Op, e.Result).Inc()
			m.opDuration.WithLabelValues(e.Op).Observe(e.Duration.Seconds())
			return
		}
		f.operations[i][j].Inc()
		f.opDuration[i].Observe(e.Duration.Seconds())
	case natskvlease.EventAcquired:
		f.acquisitions.Inc()
		f.held.Inc()
	case natskvlease.EventRenewed:
		f.renewalMargin.Observe(e.Left.Seconds())
	case natskvlease.EventLost:
		if i := causeIndex(e.Cause); i >= 0 {
			f.losses[i].Inc()
		} else {
			m.losses.WithLabelValues(string(e.Cause)).Inc()
		}
		f.held.Dec()
	case natskvlease.EventReleased:
		f.releases.Inc()
		f.held.Dec()
	case natskvlease.EventHandoff:
		f.handoff.Observe(e.Duration.Seconds())
	case natskvlease.EventLeaderChanged:
		f.leaderChanges.Inc()
	case natskvlease.EventTermEnded:
		f.leaderTerm.Observe(e.Duration.Seconds())
	}
}

// recordKeyed is Record with the key label.
func (m *Metrics) recordKeyed(e natskvlease.Event) {
	k := e.Key
	switch e.Kind {
	case natskvlease.EventOperation:
		m.operations.WithLabelValues(e.Op, e.Result, k).Inc()
		m.opDuration.WithLabelValues(e.Op, k).Observe(e.Duration.Seconds())
	case natskvlease.EventAcquired:
		m.acquisitions.WithLabelValues(k).Inc()
		m.held.WithLabelValues(k).Inc()
	case natskvlease.EventRenewed:
		m.renewalMargin.WithLabelValues(k).Observe(e.Left.Seconds())
	case natskvlease.EventLost:
		m.losses.WithLabelValues(string(e.Cause), k).Inc()
		m.held.WithLabelValues(k).Dec()
	case natskvlease.EventReleased:
		m.releases.WithLabelValues(k).Inc()
		m.held.WithLabelValues(k).Dec()
	case natskvlease.EventHandoff:
		m.handoff.WithLabelValues(k).Observe(e.Duration.Seconds())
	case natskvlease.EventLeaderChanged:
		m.leaderChanges.WithLabelValues(k).Inc()
	case natskvlease.EventTermEnded:
		m.leaderTerm.WithLabelValues(k).Observe(e.Duration.Seconds())
	}
}
