// Package peers compares natskvlease with its closest peer, etcd's
// client/v3/concurrency, side by side in one process: an embedded
// nats-server (one node, memory buckets) beside two embedded etcd
// servers, one with fsync (etcd's default) and one with UnsafeNoFsync
// (the like-for-like peer of a memory bucket). Everything is in its
// benchmarks; bench/run runs them and writes bench/results/peers.md.
//
// It is a module of its own so that etcd stays out of the library's
// go.mod.
package peers
