package natskvlease

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// Metrics receives what leases do, for monitoring: set
// LeaseConfig.Metrics (dlock.WithMetrics, leadelect.Config.Metrics). A
// nil Metrics reports nothing and costs nothing. The adapters in
// metrics/prommetrics (Prometheus) and metrics/otelmetrics
// (OpenTelemetry) implement it.
//
// Record is called synchronously, on the goroutine that did the work (the
// caller's, or a renewal timer's), sometimes with the lease's lock held:
// it must be fast, safe for concurrent use, and must not call the lease.
type Metrics interface {
	Record(Event)
}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventOperation: a network operation ended. Op, Result and Duration
	// are set.
	EventOperation EventKind = iota + 1
	// EventAcquired: a holding began. Token is set.
	EventAcquired
	// EventRenewed: a renewal landed. Left is the time that was left on
	// the safety deadline when its answer arrived: how close the holding
	// came to being lost.
	EventRenewed
	// EventLost: a holding ended without Release. Cause is set.
	EventLost
	// EventReleased: a holding ended by Release.
	EventReleased
	// EventHandoff: a waiter (AcquireWait) acquired the key after its
	// watch showed it vacant. Duration is from the watch's event to the
	// holding: the handoff as the waiter sees it.
	EventHandoff
	// EventLeaderChanged: leadelect saw a new leader (Leader is its ID).
	EventLeaderChanged
	// EventTermEnded: leadelect's candidate stopped leading. Duration is
	// the time it led.
	EventTermEnded
)

// Operations, for Event.Op.
const (
	OpAcquire = "acquire"
	OpRenew   = "renew"
	OpRelease = "release"
)

// Results, for Event.Result.
const (
	ResultOK    = "ok"
	ResultTaken = "taken" // acquire: held by another; renew: found taken over or expired
	ResultError = "error" // the operation failed; a renewal that failed past the deadline lost the lease
)

// LossCause says why a holding was lost, for Event.Cause.
type LossCause string

// Causes of a loss.
const (
	CauseTakenOver        LossCause = "taken_over"        // a renewal found the key taken, purged or expired
	CauseDeadline         LossCause = "deadline"          // the safety deadline passed before a renewal was answered
	CauseConnectionClosed LossCause = "connection_closed" // the connection was closed for good
	CauseRefused          LossCause = "refused"           // the server refused a renewal for another reason
)

// Event is one thing a lease did. Fields not named for its Kind are
// zero.
type Event struct {
	Kind     EventKind
	Key      string
	Op       string
	Result   string
	Duration time.Duration
	Left     time.Duration
	Token    uint64
	Cause    LossCause
	Leader   string
}

// record reports e to the lease's Metrics, if any.
func (l *Lease) record(e Event) {
	if l.cfg.Metrics == nil {
		return
	}
	e.Key = l.cfg.Key
	l.cfg.Metrics.Record(e)
}

// recordOp reports an operation that began at start and ended with ok
// (the operation's boolean result, when it has one) and err.
func (l *Lease) recordOp(op string, start time.Time, ok bool, err error) {
	if l.cfg.Metrics == nil {
		return
	}
	result := ResultOK
	switch {
	case err != nil:
		result = ResultError
	case !ok:
		result = ResultTaken
	}
	l.record(Event{Kind: EventOperation, Op: op, Result: result, Duration: time.Since(start)})
}

// causeOf classifies the cause of a loss.
func causeOf(err error) LossCause {
	switch {
	case errors.Is(err, errTakenOver):
		return CauseTakenOver
	case errors.Is(err, nats.ErrConnectionClosed):
		return CauseConnectionClosed
	case errors.Is(err, errDeadline):
		return CauseDeadline
	}
	return CauseRefused
}
