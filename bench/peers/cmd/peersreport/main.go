// Command peersreport turns the output of the bench/peers benchmarks
// into a markdown table: each row's median for natskvlease, etcd with
// fsync and etcd without, and the ratio ours ÷ etcd without fsync.
// bench/run calls it:
//
//	go run ./cmd/peersreport -in ../results/peers.txt -out ../results/peers.md
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

func main() {
	in := flag.String("in", "../results/peers.txt", "go test -bench output to read")
	out := flag.String("out", "../results/peers.md", "markdown file to write")
	gomod := flag.String("gomod", "go.mod", "the peers module's go.mod, for the versions compared")
	elapsed := flag.String("elapsed", "", "how long the run took (shown if set)")
	mode := flag.String("mode", "", "how the run was sized (shown if set)")
	flag.Parse()
	f, err := os.Open(*in)
	if err != nil {
		fatal(err)
	}
	res, order, err := parse(f)
	f.Close()
	if err != nil {
		fatal(err)
	}
	mod, _ := os.ReadFile(*gomod)
	var sb strings.Builder
	header(&sb, string(mod), *elapsed, *mode)
	table(&sb, res, order)
	if err := os.WriteFile(*out, []byte(sb.String()), 0o644); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "peersreport:", err)
	os.Exit(1)
}

// results maps a benchmark name (without its -GOMAXPROCS suffix) to its
// runs, each a map from unit to value.
type results map[string][]map[string]float64

var procsSuffix = regexp.MustCompile(`-\d+$`)

// parse reads go test -bench output; order lists the benchmarks as they
// first appear.
func parse(r io.Reader) (results, []string, error) {
	res := results{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		run := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: value %q: %w", f[0], f[i], err)
			}
			run[f[i+1]] = v
		}
		name := procsSuffix.ReplaceAllString(f[0], "")
		if _, ok := res[name]; !ok {
			order = append(order, name)
		}
		res[name] = append(res[name], run)
	}
	return res, order, sc.Err()
}

// get returns the median over runs of system sys's figure fig in bench:
// the metric "<sys>-<fig>" of bench, or "<fig>" of the sub-benchmark
// bench/<sys>.
func (r results) get(bench, sys, fig string) (float64, bool) {
	var vs []float64
	for _, run := range r[bench] {
		if v, ok := run[sys+"-"+fig]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		for _, run := range r[bench+"/"+sys] {
			if v, ok := run[fig]; ok {
				vs = append(vs, v)
			}
		}
	}
	if len(vs) == 0 {
		return 0, false
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2], true
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2, true
}

// row is one line of the table: bench's figure fig for ours and the
// two etcds.
type row struct {
	label, bench, ours, fig, unit string
	scale                         float64 // shown value = metric × scale
}

func rows(res results, order []string) []row {
	out := []row{
		{"uncontended lock cycle: `dlock` Lock+Unlock of a free key vs Mutex Lock+Unlock", "BenchmarkLockCycle", "dlock", "µs", "µs", 1},
		{"uncontended lock cycle: `Lease` Acquire+Release vs Mutex Lock+Unlock", "BenchmarkLockCycle", "lease", "µs", "µs", 1},
		{"uncontended lock cycle: a fresh `Lease` (NewLease, Acquire, Release) vs Mutex Lock+Unlock", "BenchmarkLockCycle", "fresh-lease", "µs", "µs", 1},
		{"uncontended lock cycle: `Lease` AcquireWait+Release in a bucket another key writes to between its cycles (each relock reads the key's latest queue ticket first) vs Mutex Lock+Unlock", "BenchmarkLockCycle", "busy-lease", "µs", "µs", 1},
		{"keep-alive: one renewal (`Lease.Renew` vs one LeaseKeepAlive on its stream)", "BenchmarkKeepAlive", "lease", "µs", "µs", 1},
	}
	for _, name := range order {
		var ours, what string
		switch {
		case strings.HasPrefix(name, "BenchmarkHandoff/"):
			ours, what = "dlock", handoffLabel(strings.TrimPrefix(name, "BenchmarkHandoff/"))
		case strings.HasPrefix(name, "BenchmarkElection/"):
			ours, what = "leadelect", "election handoff, "+strings.TrimPrefix(name, "BenchmarkElection/candidates=")+" waiting candidate(s), a connection each"
		default:
			continue
		}
		out = append(out,
			row{what + ", p50", name, ours, "p50-µs", "ms", 0.001},
			row{what + ", p99", name, ours, "p99-µs", "ms", 0.001})
	}
	if runs := res["BenchmarkFailover"]; len(runs) > 0 {
		ttl := runs[0]["ttl-ms"]
		what := fmt.Sprintf("crash failover at TTL %.0f s (holder killed right after a renewal)", ttl/1000)
		out = append(out,
			row{what + ", median", "BenchmarkFailover", "dlock", "ms", "ms", 1},
			row{what + ", max", "BenchmarkFailover", "dlock", "max-ms", "ms", 1})
	}
	for _, name := range order {
		base, ok := strings.CutSuffix(name, "/dlock")
		if !ok || !strings.HasPrefix(base, "BenchmarkIdleLocks/") {
			continue
		}
		n := strings.TrimPrefix(base, "BenchmarkIdleLocks/locks=")
		what := n + " idle held locks, one client: "
		out = append(out,
			row{what + "goroutines per lock", base, "dlock", "goroutines/lock", "", 1},
			row{what + "heap per lock", base, "dlock", "heap-B/lock", "B", 1},
			row{what + "client CPU per renewal", base, "dlock", "cpu-µs/renewal", "µs", 1},
			row{what + "server CPU per renewal", base, "dlock", "server-cpu-µs/renewal", "µs", 1},
			row{what + "client CPU", base, "dlock", "cpu-ms/s", "ms/s", 1},
			row{what + "server CPU", base, "dlock", "server-cpu-ms/s", "ms/s", 1})
	}
	return out
}

func handoffLabel(sub string) string {
	// "waiters=100" or "waiters=100/conns=4"
	w, conns, shared := strings.Cut(strings.TrimPrefix(sub, "waiters="), "/conns=")
	if shared {
		return fmt.Sprintf("handoff, %s waiters on %s shared connections", w, conns)
	}
	return fmt.Sprintf("handoff, %s waiter(s), a connection each", w)
}

func header(sb *strings.Builder, gomod, elapsed, mode string) {
	fmt.Fprintf(sb, "# natskvlease against etcd's concurrency package\n\n")
	fmt.Fprintf(sb, "Written by `bench/run` (bench/peers, `go run ./cmd/peersreport`); the raw\n`go test -bench` output is [peers.txt](peers.txt).\n\n")
	fmt.Fprintf(sb, "- Compared: natskvlease (`dlock`, `Lease`, `leadelect`) on an embedded nats-server %s, one node, memory buckets; etcd %s `client/v3/concurrency` (`Mutex`, `Session`, `Election`) on an embedded single-member etcd, once **with fsync** (etcd's default) and once **without** (`UnsafeNoFsync: true`, the like-for-like peer of a memory bucket: neither syncs a disk).\n",
		version(gomod, "github.com/nats-io/nats-server/v2"), version(gomod, "go.etcd.io/etcd/server/v3"))
	fmt.Fprintf(sb, "- All servers listen on loopback, random ports, temporary directories. Latency rows run in one process, the three systems interleaved round by round (each round one operation or handoff on each, in rotating order). The idle-lock rows hold the locks of one system at a time against a server in a child process, so client CPU (getrusage of the benchmark process) and server CPU (/proc/<pid>/stat of the child) are measured apart.\n")
	fmt.Fprintf(sb, "- Figures are medians over rounds (p99 where said), then the median over `-count` runs. **ratio** is ours ÷ etcd without fsync: below 1 ours is faster or cheaper.\n")
	fmt.Fprintf(sb, "- Machine: %s, %d CPUs seen by Go, %s.", cpuModel(), runtime.NumCPU(), runtime.Version())
	if mode != "" {
		fmt.Fprintf(sb, " Size: %s.", mode)
	}
	if elapsed != "" {
		fmt.Fprintf(sb, " The run took %s.", elapsed)
	}
	sb.WriteString("\n\n")
}

func table(sb *strings.Builder, res results, order []string) {
	sb.WriteString("| row | unit | ours | etcd, fsync | etcd, no fsync | ratio ours ÷ etcd no fsync |\n|---|---|---|---|---|---|\n")
	for _, r := range rows(res, order) {
		ours, ok := res.get(r.bench, r.ours, r.fig)
		if !ok {
			continue
		}
		ef, okf := res.get(r.bench, "etcd-fsync", r.fig)
		en, okn := res.get(r.bench, "etcd-nofsync", r.fig)
		ratio := "–"
		if okn && en != 0 {
			ratio = fmt.Sprintf("%.2f", ours/en)
		}
		cell := func(v float64, ok bool) string {
			if !ok {
				return "–"
			}
			return num(v * r.scale)
		}
		fmt.Fprintf(sb, "| %s | %s | %s | %s | %s | %s |\n", r.label, r.unit, cell(ours, true), cell(ef, okf), cell(en, okn), ratio)
	}
}

// num shows three significant digits or so.
func num(v float64) string {
	switch a := max(v, -v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func version(gomod, module string) string {
	for line := range strings.SplitSeq(gomod, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return "(version unknown)"
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
