// Package buckets holds the histogram bucket boundaries, in seconds,
// that the metrics adapters (metrics/prommetrics, metrics/otelmetrics)
// offer by default, so that the two agree. Each call returns a new
// slice the caller may keep.
package buckets

// Duration suits one round trip to a NATS server, and a handoff seen by
// a waiter: milliseconds, with a tail for timeouts.
func Duration() []float64 {
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
}

// Margin suits the time left on a lease's safety deadline (nine tenths
// of a TTL of seconds to a minute) when a renewal lands.
func Margin() []float64 {
	return []float64{.05, .1, .25, .5, 1, 2, 3, 5, 7.5, 10, 20, 30, 60}
}

// Term suits how long a leader leads: seconds to a day.
func Term() []float64 {
	return []float64{1, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600}
}
