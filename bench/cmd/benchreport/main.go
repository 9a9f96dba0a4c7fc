// Command benchreport turns the output of the bench package's benchmarks
// (bench/results/latest.txt) into bench/results/README.md: tables of the
// lease operations beside the raw KeyValue calls, handoff and failover
// latencies and the many-leases figures, with the targets of issue 5 and
// the machine they were measured on. bench/run calls it.
//
//	go run ./bench/cmd/benchreport -in bench/results/latest.txt -out bench/results/README.md
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	in := flag.String("in", "bench/results/latest.txt", "benchmark output to read")
	out := flag.String("out", "bench/results/README.md", "markdown file to write")
	elapsed := flag.Duration("elapsed", 0, "how long bench/run took (shown if set)")
	command := flag.String("command", "bench/run", "the command that produced the output")
	flag.Parse()

	f, err := os.Open(*in)
	if err != nil {
		fatal(err)
	}
	results, err := parse(f)
	f.Close()
	if err != nil {
		fatal(err)
	}
	m := machineInfo()
	m.elapsed = *elapsed
	m.command = *command
	var sb strings.Builder
	render(&sb, results, m)
	if err := os.WriteFile(*out, []byte(sb.String()), 0o644); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchreport:", err)
	os.Exit(1)
}

// Results maps a benchmark name (without the -GOMAXPROCS suffix) to its
// runs, each a map from unit to value ("ns/op", "p50-µs", ...).
type Results map[string][]map[string]float64

// parse reads `go test -bench` output.
func parse(r io.Reader) (Results, error) {
	res := Results{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		iters, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		run := map[string]float64{"iterations": float64(iters)}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: value %q: %w", f[0], f[i], err)
			}
			run[f[i+1]] = v
		}
		name := trimProcs(f[0])
		res[name] = append(res[name], run)
	}
	return res, sc.Err()
}

// trimProcs removes the "-N" GOMAXPROCS suffix go test appends.
func trimProcs(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

// get returns the median of unit over the runs of name.
func (r Results) get(name, unit string) (float64, bool) {
	var vs []float64
	for _, run := range r[name] {
		if v, ok := run[unit]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return 0, false
	}
	return median(vs), true
}

func (r Results) runs(name string) int { return len(r[name]) }

func median(vs []float64) float64 {
	vs = slices.Clone(vs)
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

type machine struct {
	goVersion, cpu, date, command string
	nproc                         int
	elapsed                       time.Duration
}

func machineInfo() machine {
	m := machine{
		goVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		nproc:     runtime.NumCPU(),
		date:      time.Now().UTC().Format("2006-01-02 15:04 MST"),
		cpu:       "unknown",
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m.goVersion = strings.TrimPrefix(strings.TrimSpace(string(out)), "go version ")
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.cpu = cpuModel(string(data))
	}
	return m
}

func cpuModel(cpuinfo string) string {
	for line := range strings.Lines(cpuinfo) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Targets of issue 5.
const (
	opTarget      = 1.1 // lease at most 1.1x the raw calls
	handoffTarget = 3.0 // p50 within 3 raw round trips
	failoverSlack = 100 // ms over the TTL
)

func render(w *strings.Builder, r Results, m machine) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# Benchmark results\n\n")
	p("Written by `%s` (bench/cmd/benchreport) from [latest.txt](latest.txt); do not edit by hand.\n\n", m.command)
	p("| machine | |\n|---|---|\n")
	p("| date | %s |\n| go | %s |\n| CPUs (nproc) | %d |\n| CPU model | %s |\n", m.date, m.goVersion, m.nproc, m.cpu)
	if m.elapsed > 0 {
		p("| bench/run took | %s |\n", m.elapsed.Round(time.Second))
	}
	p("\nEvery server is embedded in the benchmark process (nats-server as a library, clients over loopback TCP), except in the many-leases benchmark, which runs it in a child process so as to measure the client alone. R1: one server, buckets with one replica. R3: a three-node cluster in the same process, buckets with three replicas. Memory storage throughout. The client and the servers share the machine's CPUs.\n\n")

	renderOps(p, r)
	renderHandoff(p, r)
	renderFailover(p, r)
	renderMany(p, r)
}

type printer func(format string, args ...any)

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func renderOps(p printer, r Results) {
	p("## Lease operations beside the raw KeyValue calls\n\n")
	p("Each benchmark iteration runs one of each, in rotating order, on one connection and one bucket (a key each), and times each call; a run reports each one's median, and the table shows the median over the runs of those figures and of their per-run ratios. Interleaved like this, a moment of machine noise weighs on all three alike. Target: lease ≤ %.1f× raw.\n\n", opTarget)
	p("- *raw*: `kv.Update` on the known revision (+ `kv.Delete(LastRevision)` for the cycle), with the revisions tracked so that every call succeeds;\n")
	p("- *raw+TTL*: the write a lease actually sends: a publish with the expected-revision header and a per-message TTL (`kv.Update` cannot carry a TTL);\n")
	p("- *lease*: `Lease.Acquire`+`Lease.Release` (each Acquire is one write: the lease knows the delete marker's revision), `Lease.Renew`.\n\n")
	p("| operation | topology | runs | raw µs | raw+TTL µs | lease µs | lease / raw | lease / raw+TTL | target ≤ %.1f× |\n|---|---|---|---|---|---|---|---|---|\n", opTarget)
	for _, op := range []struct{ bench, label string }{{"AcquireRelease", "acquire + release"}, {"Renew", "renew"}} {
		for _, top := range []string{"R1", "R3"} {
			name := "Benchmark" + op.bench + "/" + top
			raw, ok1 := r.get(name, "raw-ns/op")
			rawTTL, ok2 := r.get(name, "raw-ttl-ns/op")
			lease, ok3 := r.get(name, "lease-ns/op")
			ratio, ok4 := r.get(name, "lease/raw")
			vsTTL, ok5 := r.get(name, "lease/raw-ttl")
			if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
				continue
			}
			p("| %s | %s | %d | %.0f | %.0f | %.0f | %.2f× | %.2f× | %s |\n", op.label, top, r.runs(name), raw/1e3, rawTTL/1e3, lease/1e3, ratio, vsTTL, met(ratio <= opTarget))
		}
	}
	p("\n")
}

// handoffRows are the handoff sub-benchmarks, in table order.
var handoffRows = []struct{ sub, label string }{
	{"waiters=1", "1"},
	{"waiters=10", "10"},
	{"waiters=100", "100"},
	{"separate=10", "10, a connection each"},
}

func renderHandoff(p printer, r Results) {
	p("## Handoff\n\n")
	p("The holder releases (`LeaseManager.Stop`, `Lock.Unlock`); the latency runs from that call to the waiter's `OnAcquired` (manager) or the return of its blocked `dlock.Lock` (dlock). The waiters share at most 4 connections, as goroutines of a service would (*a connection each*: as separate processes would, with nobody to queue behind in the process). *rtt* is a raw `kv.Update` measured in the same benchmark between handoffs, starting from idle as a handoff does (*warm*: a second one right after it). *release* is how long the releasing call took. Target: p50 ≤ %.0f raw round trips.\n\n", handoffTarget)
	p("| topology | waiter | waiters | samples | p50 µs | p99 µs | rtt p50 µs | p50 / rtt | target ≤ %.0f rtt | release p50 µs | warm rtt p50 µs |\n|---|---|---|---|---|---|---|---|---|---|---|\n", handoffTarget)
	for _, top := range []string{"R1", "R3"} {
		for _, kind := range []string{"manager", "dlock"} {
			for _, w := range handoffRows {
				n := w.label
				name := fmt.Sprintf("BenchmarkHandoff/%s/%s/%s", top, kind, w.sub)
				p50, ok := r.get(name, "p50-µs")
				if !ok {
					continue
				}
				p99, _ := r.get(name, "p99-µs")
				rtt, _ := r.get(name, "rtt-p50-µs")
				rel, _ := r.get(name, "release-p50-µs")
				warm, _ := r.get(name, "rtt-warm-p50-µs")
				ratio := p50 / rtt
				p("| %s | %s | %s | %s | %.0f | %.0f | %.0f | %.1f | %s | %.0f | %.0f |\n", top, kind, n, sampleCount(r, name), p50, p99, rtt, ratio, met(ratio <= handoffTarget), rel, warm)
			}
		}
	}
	p("\n![handoff latency distribution](handoff.png)\n\n")
}

// sampleCount is the number of handoffs measured (the benchmark's N).
func sampleCount(r Results, name string) string {
	if n, ok := r.get(name, "iterations"); ok {
		return strconv.Itoa(int(n))
	}
	return "–"
}

func renderFailover(p printer, r Results) {
	p("## Failover\n\n")
	p("The holder's connection is closed (`nc.Close()`, no release) right after its last write, so that write lives its whole TTL on the server: right after it acquired (over the previous holder's expiry marker), or right after its first renewal. The latency runs from the close to the waiter's `OnAcquired` or `Lock` return; *expiry* is when a plain watcher of the key saw the server's expiry marker (it misses some: the waiter's write replaces the marker at once in a History 1 bucket, and a watcher that lags skips it). Target: ≤ TTL + %d ms.\n\n", failoverSlack)
	p("| waiter | holder killed right after | failovers | TTL ms | failover p50 ms | failover max ms | expiry marker p50 ms (unseen) | target p50 | target max |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, kind := range []string{"manager", "dlock"} {
		for _, mode := range []string{"after-acquire", "after-renew"} {
			name := "BenchmarkFailover/" + kind + "/" + mode
			fo, ok := r.get(name, "failover-ms")
			if !ok {
				continue
			}
			ttl, _ := r.get(name, "ttl-ms")
			mx, _ := r.get(name, "failover-max-ms")
			exp, _ := r.get(name, "expiry-ms")
			unseen, _ := r.get(name, "markers-unseen")
			limit := ttl + failoverSlack
			p("| %s | %s | %s | %.0f | %.0f | %.0f | %.0f (%.0f) | %s | %s |\n", kind, strings.TrimPrefix(mode, "after-"), sampleCount(r, name), ttl, fo, mx, exp, unseen, met(fo <= limit), met(mx <= limit))
		}
	}
	p("\n![failover timeline](failover.png)\n\n")
}

func renderMany(p printer, r Results) {
	const name = "BenchmarkManyLeases"
	if r.runs(name) == 0 {
		return
	}
	g := func(unit string) float64 { v, _ := r.get(name, unit); return v }
	p("## Many leases in one process\n\n")
	p("%.0f leases on one connection, each renewed in the background by `RunCamping` (TTL 10 s, a renewal every 3.3 s), held for %.0f s. The server runs in a child process: CPU and memory are the client's.\n\n", g("leases"), g("held-s"))
	p("| figure | value |\n|---|---|\n")
	p("| acquiring them all (32 goroutines) | %.2f s |\n", g("acquire-s"))
	p("| renewals per second | %.0f |\n", g("renewals/s"))
	p("| client CPU | %.1f ms per second (%.1f%% of one CPU) |\n", g("cpu-ms/s"), g("cpu-ms/s")/10)
	p("| client CPU per renewal | %.0f µs |\n", g("cpu-µs/renewal"))
	p("| server CPU (child process) | %.1f ms per second |\n", g("server-cpu-ms/s"))
	p("| heap per lease (live, after GC) | %.0f B |\n", g("heap-B/lease"))
	p("| goroutine stacks per lease | %.0f B |\n", g("stack-B/lease"))
	p("| goroutines per lease | %.2f |\n", g("goroutines/lease"))
	p("| leases lost / not held at the end | %.0f / %.0f |\n", g("lost"), g("not-held"))
	p("\nIssue 5 asks that no goroutine per idle lease be needed. A `RunCamping` loop waits on a timer, not in a goroutine; a renewal runs on the timer's goroutine while it is due. Measured with the leases idle between renewals: %.3f goroutines per lease (target: well below one).\n", g("goroutines/lease"))
}
