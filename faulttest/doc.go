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
//
// TestExpiryWipesAcknowledgedWrite and TestExpiryNemesis (issue 9) pause
// every route of a route-proxied cluster around the instant a key's latest
// revision expires. NATSKVLEASE_WIPE_TRIALS sets the trials per row of the
// first (default 6); NATSKVLEASE_EXPIRY_FILE=1 puts both on a file storage
// bucket instead of memory storage.
package faulttest
