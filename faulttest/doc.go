// Package faulttest proves the lease's safety properties under faults: a
// three-node JetStream cluster (and a single file-storage server) whose
// stream leaders step down, whose nodes restart, whose client connections
// and acknowledgements are black-holed, and whose holders pause. Several
// contenders acquire, hold and release one key while a checker
// (internal/checker) verifies that no two holders' beliefs overlap and
// that fencing tokens only grow.
//
// The package holds tests only. Each scenario runs a few seconds by
// default; set NATSKVLEASE_SOAK to a Go duration (for example "10m") to
// run each for that long. Every scenario ends with a line
//
//	SCENARIO <name> handoffs=.. faults=.. overlaps=0 regressions=0 spurious=.. max_gap=..
//
// for the README's table of figures.
package faulttest
