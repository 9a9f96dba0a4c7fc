package bench

import (
	"testing"
	"time"
)

// The benchmarks are run by bench/run; these tests check the helpers
// their figures depend on, and keep `go test ./bench/` quick.

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.1, 1}} {
		if got := percentile(s, c.p); got != c.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("percentile of one sample = %v, want 7", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile of none = %v, want 0", got)
	}
}

func TestParseProcStatCPU(t *testing.T) {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
	stat := "4242 (bench test) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0"
	if got, want := parseProcStatCPU(stat), 3*time.Second; got != want {
		t.Errorf("parseProcStatCPU = %v, want %v", got, want)
	}
	if got := parseProcStatCPU("garbage"); got != 0 {
		t.Errorf("parseProcStatCPU(garbage) = %v, want 0", got)
	}
}

func TestSampleFile(t *testing.T) {
	if got, want := sampleFile("handoff", "BenchmarkHandoff/R1/dlock/waiters=10"), "handoff_BenchmarkHandoff_R1_dlock_waiters10.tsv"; got != want {
		t.Errorf("sampleFile = %q, want %q (bench/plot reads this name)", got, want)
	}
}
