package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/natskvlease/natskvlease/bench
cpu: AMD EPYC
BenchmarkRenew/R1-2 	    9000	    330000 ns/op	    120000 lease-ns/op	         1.200 lease/raw	         1.150 lease/raw-ttl	    100000 raw-ns/op	    104000 raw-ttl-ns/op	         1.040 raw-ttl/raw
BenchmarkRenew/R1-2 	    9000	    320000 ns/op	    108000 lease-ns/op	         1.070 lease/raw	         1.020 lease/raw-ttl	    102000 raw-ns/op	    106000 raw-ttl-ns/op	         1.040 raw-ttl/raw
BenchmarkRenew/R1-2 	    9000	    310000 ns/op	    105000 lease-ns/op	         1.050 lease/raw	         1.010 lease/raw-ttl	     98000 raw-ns/op	    103000 raw-ttl-ns/op	         1.050 raw-ttl/raw
BenchmarkHandoff/R1/manager/waiters=10-2        	     200	   1123656 ns/op	         4.427 p50-rtts	      1027 p50-µs	      2411 p99-µs	       540.8 release-p50-µs	       232.0 rtt-p50-µs	       135.2 rtt-warm-p50-µs
BenchmarkFailover/manager/after-acquire-2 	      10	1026080968 ns/op	      1001 expiry-ms	      1250 failover-max-ms	      1001 failover-ms	         0.3910 kill-delay-max-ms	      1000 ttl-ms
BenchmarkManyLeases-2   	       1	8304613886 ns/op	         0.2505 acquire-s	        24.79 cpu-ms/s	        99.18 cpu-µs/renewal	         0.0010 goroutines/lease	      1866 heap-B/lease	         8.001 held-s	      1000 leases	         0 lost	         0 not-held	       250.0 renewals/s	        18.75 server-cpu-ms/s	      2163 stack-B/lease
PASS
`

func TestParseAndRender(t *testing.T) {
	r, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if n := r.runs("BenchmarkRenew/R1"); n != 3 {
		t.Fatalf("runs of BenchmarkRenew/R1 = %d, want 3", n)
	}
	if v, _ := r.get("BenchmarkRenew/R1", "lease-ns/op"); v != 108000 {
		t.Errorf("median lease-ns/op = %v, want 108000", v)
	}
	if v, _ := r.get("BenchmarkHandoff/R1/manager/waiters=10", "p50-µs"); v != 1027 {
		t.Errorf("p50-µs = %v, want 1027", v)
	}
	var sb strings.Builder
	render(&sb, r, machine{goVersion: "go1.26.8 linux/amd64", nproc: 2, cpu: "AMD EPYC", date: "today", command: "bench/run"})
	md := sb.String()
	for _, want := range []string{
		"| renew | R1 | 3 | 100 | 104 | 108 | 1.07× | 1.02× | met |",
		"| R1 | manager | 10 | 200 | 1027 | 2411 | 232 | 4.4 | **missed** | 541 | 135 |",
		"| manager | acquire | 10 | 1000 | 1001 | 1250 | 1001 (0) | met | **missed** |",
		"| goroutines per lease | 0.00 |",
		"| CPU model | AMD EPYC |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestTrimProcs(t *testing.T) {
	for in, want := range map[string]string{
		"BenchmarkRenew/R1/raw-ttl-2":              "BenchmarkRenew/R1/raw-ttl",
		"BenchmarkRenew/R1/raw-ttl":                "BenchmarkRenew/R1/raw-ttl",
		"BenchmarkHandoff/R3/dlock/waiters=100-16": "BenchmarkHandoff/R3/dlock/waiters=100",
	} {
		if got := trimProcs(in); got != want {
			t.Errorf("trimProcs(%q) = %q, want %q", in, got, want)
		}
	}
}
