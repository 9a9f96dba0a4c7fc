// Package otelmetrics reports natskvlease's lease events as OpenTelemetry
// metrics, through a metric.Meter: pass a *Metrics as
// natskvlease.LeaseConfig.Metrics, dlock.WithMetrics or
// leadelect.Config.Metrics.
//
// The instruments:
//
//	natskvlease.operations            counter        op, result
//	natskvlease.operation.duration    histogram, s   op
//	natskvlease.acquisitions          counter
//	natskvlease.losses                counter        cause
//	natskvlease.releases              counter
//	natskvlease.renewal.margin        histogram, s
//	natskvlease.handoff.duration      histogram, s
//	natskvlease.held                  updowncounter
//	natskvlease.leader.changes        counter
//	natskvlease.leader.term.duration  histogram, s
//
// op is acquire, renew or release; result is ok, taken or error; cause is
// taken_over, deadline, connection_closed or refused (see the natskvlease
// constants of those names). WithKeyAttribute adds a key attribute to
// every measurement. An exporter to Prometheus turns the dots into
// underscores and adds unit and _total suffixes, giving names close to
// those of the prommetrics package.
package otelmetrics

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/buckets"
)

// Attribute keys.
const (
	AttrOp     = attribute.Key("op")
	AttrResult = attribute.Key("result")
	AttrCause  = attribute.Key("cause")
	AttrKey    = attribute.Key("key")
)

// Advised histogram bucket boundaries, in seconds; a View overrides
// them.
var (
	// DurationBuckets suit one round trip to a NATS server, and a
	// handoff seen by a waiter.
	DurationBuckets = buckets.Duration()
	// MarginBuckets suit the time left on a lease's safety deadline (nine
	// tenths of a TTL of seconds to a minute) when a renewal lands.
	MarginBuckets = buckets.Margin()
	// TermBuckets suit how long a leader leads: seconds to a day.
	TermBuckets = buckets.Term()
)

// Option configures New.
type Option func(*options)

type options struct {
	keyAttr bool
}

// WithKeyAttribute adds a key attribute, the lease's key (the lock's, the
// election's), to every measurement: natskvlease.held then says which
// keys this process holds. Each key becomes streams of its own, so use it
// for a bounded set of keys, not for locks named per request. Each event
// then builds an attribute set, which allocates.
func WithKeyAttribute() Option { return func(o *options) { o.keyAttr = true } }

// Fixed attribute values, in the order of the arrays below.
var (
	ops     = [...]string{natskvlease.OpAcquire, natskvlease.OpRenew, natskvlease.OpRelease}
	results = [...]string{natskvlease.ResultOK, natskvlease.ResultTaken, natskvlease.ResultError}
	causes  = [...]natskvlease.LossCause{natskvlease.CauseTakenOver, natskvlease.CauseDeadline, natskvlease.CauseConnectionClosed, natskvlease.CauseRefused}
)

func index[T comparable](values []T, v T) int {
	for i, x := range values {
		if x == v {
			return i
		}
	}
	return -1
}

// Metrics is a natskvlease.Metrics that records to OpenTelemetry
// instruments. It is safe for concurrent use; one Metrics may serve any
// number of leases, lock clients and elections.
type Metrics struct {
	keyAttr bool

	operations    metric.Int64Counter
	opDuration    metric.Float64Histogram
	acquisitions  metric.Int64Counter
	losses        metric.Int64Counter
	releases      metric.Int64Counter
	renewalMargin metric.Float64Histogram
	handoff       metric.Float64Histogram
	held          metric.Int64UpDownCounter
	leaderChanges metric.Int64Counter
	leaderTerm    metric.Float64Histogram

	// Measurement options built once for the fixed attribute values, so
	// that Record without the key attribute does not allocate them.
	opResult [len(ops)][len(results)][]metric.AddOption
	op       [len(ops)][]metric.RecordOption
	cause    [len(causes)][]metric.AddOption
}

var _ natskvlease.Metrics = (*Metrics)(nil)

// New creates the instruments from meter (for instance
// otel.Meter("github.com/natskvlease/natskvlease") or a MeterProvider's
// Meter).
func New(meter metric.Meter, opts ...Option) (*Metrics, error) {
	if meter == nil {
		return nil, errors.New("otelmetrics: the meter is nil")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	m := &Metrics{keyAttr: o.keyAttr}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string, buckets []float64) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(buckets...))
		errs = append(errs, err)
		return h
	}
	m.operations = counter("natskvlease.operations", "{operation}",
		"Lease operations on the server (acquire, renew, release) by result: ok, taken (held by another, or found taken over), error.")
	m.opDuration = histogram("natskvlease.operation.duration",
		"How long lease operations took, from the first request to the answer or the failure.", DurationBuckets)
	m.acquisitions = counter("natskvlease.acquisitions", "{acquisition}", "Holdings begun: leases acquired.")
	m.losses = counter("natskvlease.losses", "{loss}",
		"Holdings that ended without a release, by cause: taken_over, deadline (the safety deadline passed before a renewal was answered), connection_closed, refused.")
	m.releases = counter("natskvlease.releases", "{release}", "Holdings ended by a release.")
	m.renewalMargin = histogram("natskvlease.renewal.margin",
		"Time left on the lease's safety deadline when each renewal landed: how close the holding came to being lost.", MarginBuckets)
	m.handoff = histogram("natskvlease.handoff.duration",
		"Time from a waiter seeing the key vacant on its watch to holding it: the handoff as the waiter sees it.", DurationBuckets)
	held, err := meter.Int64UpDownCounter("natskvlease.held", metric.WithUnit("{lease}"),
		metric.WithDescription("Leases this process holds now (locks and leaderships included)."))
	errs = append(errs, err)
	m.held = held
	m.leaderChanges = counter("natskvlease.leader.changes", "{change}",
		"New leaders seen by the elections' candidates in this process, their own terms included.")
	m.leaderTerm = histogram("natskvlease.leader.term.duration",
		"How long each term of this process's candidates lasted, from acquiring leadership to stopping.", TermBuckets)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("otelmetrics: cannot create the instruments: %w", err)
	}

	for i, op := range ops {
		for j, r := range results {
			set := attribute.NewSet(AttrOp.String(op), AttrResult.String(r))
			m.opResult[i][j] = []metric.AddOption{metric.WithAttributeSet(set)}
		}
		m.op[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(AttrOp.String(op)))}
	}
	for i, c := range causes {
		m.cause[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(AttrCause.String(string(c))))}
	}
	return m, nil
}

// Record implements natskvlease.Metrics.
func (m *Metrics) Record(e natskvlease.Event) {
	if m.keyAttr {
		m.recordKeyed(e)
		return
	}
	ctx := context.Background()
	switch e.Kind {
	case natskvlease.EventOperation:
		i, j := index(ops[:], e.Op), index(results[:], e.Result)
		if i < 0 || j < 0 { // a value this version does not know
			m.operations.Add(ctx, 1, metric.WithAttributes(AttrOp.String(e.Op), AttrResult.String(e.Result)))
			m.opDuration.Record(ctx, e.Duration.Seconds(), metric.WithAttributes(AttrOp.String(e.Op)))
			return
		}
		m.operations.Add(ctx, 1, m.opResult[i][j]...)
		m.opDuration.Record(ctx, e.Duration.Seconds(), m.op[i]...)
	case natskvlease.EventAcquired:
		m.acquisitions.Add(ctx, 1)
		m.held.Add(ctx, 1)
	case natskvlease.EventRenewed:
		m.renewalMargin.Record(ctx, e.Left.Seconds())
	case natskvlease.EventLost:
		if i := index(causes[:], e.Cause); i >= 0 {
			m.losses.Add(ctx, 1, m.cause[i]...)
		} else {
			m.losses.Add(ctx, 1, metric.WithAttributes(AttrCause.String(string(e.Cause))))
		}
		m.held.Add(ctx, -1)
	case natskvlease.EventReleased:
		m.releases.Add(ctx, 1)
		m.held.Add(ctx, -1)
	case natskvlease.EventHandoff:
		m.handoff.Record(ctx, e.Duration.Seconds())
	case natskvlease.EventLeaderChanged:
		m.leaderChanges.Add(ctx, 1)
	case natskvlease.EventTermEnded:
		m.leaderTerm.Record(ctx, e.Duration.Seconds())
	}
}

// recordKeyed is Record with the key attribute.
func (m *Metrics) recordKeyed(e natskvlease.Event) {
	ctx := context.Background()
	key := AttrKey.String(e.Key)
	only := metric.WithAttributes(key)
	switch e.Kind {
	case natskvlease.EventOperation:
		m.operations.Add(ctx, 1, metric.WithAttributes(AttrOp.String(e.Op), AttrResult.String(e.Result), key))
		m.opDuration.Record(ctx, e.Duration.Seconds(), metric.WithAttributes(AttrOp.String(e.Op), key))
	case natskvlease.EventAcquired:
		m.acquisitions.Add(ctx, 1, only)
		m.held.Add(ctx, 1, only)
	case natskvlease.EventRenewed:
		m.renewalMargin.Record(ctx, e.Left.Seconds(), only)
	case natskvlease.EventLost:
		m.losses.Add(ctx, 1, metric.WithAttributes(AttrCause.String(string(e.Cause)), key))
		m.held.Add(ctx, -1, only)
	case natskvlease.EventReleased:
		m.releases.Add(ctx, 1, only)
		m.held.Add(ctx, -1, only)
	case natskvlease.EventHandoff:
		m.handoff.Record(ctx, e.Duration.Seconds(), only)
	case natskvlease.EventLeaderChanged:
		m.leaderChanges.Add(ctx, 1, only)
	case natskvlease.EventTermEnded:
		m.leaderTerm.Record(ctx, e.Duration.Seconds(), only)
	}
}
