// Package bench holds the benchmarks of issue 5: each measures a lease
// operation beside the raw jetstream.KeyValue calls it is built from, in
// the same run, against an embedded nats-server (a three-node cluster for
// the R3 variants). It has no code of its own: run the benchmarks with
// bench/run, which writes bench/results/.
//
//	go test -run '^$' -bench . ./bench/
//
// Environment:
//
//	NATSKVLEASE_BENCH_LEASES    leases held by BenchmarkManyLeases (default 1000)
//	NATSKVLEASE_BENCH_DURATION  how long it holds them (default 15s)
//	NATSKVLEASE_BENCH_SAMPLES   a directory: handoff and failover samples are written there
package bench
