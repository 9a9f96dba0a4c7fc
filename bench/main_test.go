package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// childServerEnv, set to a store directory, turns the test binary into a
// nats-server (see runChildServer): BenchmarkManyLeases runs its server
// in a separate process so that the CPU time and memory it reports are
// the client's alone.
const childServerEnv = "NATSKVLEASE_BENCH_CHILD_SERVER"

// samplesEnv names a directory into which the handoff and failover
// benchmarks write their samples, for bench/plot.
const samplesEnv = "NATSKVLEASE_BENCH_SAMPLES"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childServerEnv); dir != "" {
		os.Exit(runChildServer(dir))
	}
	goleak.VerifyTestMain(m)
}

// runChildServer serves JetStream on a random loopback port, prints its
// URL on stdout, and shuts down when stdin is closed (the parent ended).
func runChildServer(dir string) int {
	s, err := server.NewServer(&server.Options{
		ServerName: "bench-child",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   dir,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child server:", err)
		return 1
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "child server: not ready within 10s")
		return 1
	}
	fmt.Println(s.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Shutdown()
	s.WaitForShutdown()
	return 0
}

// childServer is a nats-server in a process of its own.
type childServer struct {
	cmd *exec.Cmd
	url string
}

func startChildServer(tb testing.TB) *childServer {
	tb.Helper()
	dir := tb.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), childServerEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start child server: %v", err)
	}
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("child server did not report its URL: %v", err)
	}
	return &childServer{cmd: cmd, url: strings.TrimSpace(line)}
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpu returns the child's user+system CPU time so far, from
// /proc/<pid>/stat (0 where there is no /proc).
func (c *childServer) cpu() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	return parseProcStatCPU(string(data))
}

// parseProcStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/<pid>/stat line; the command name in field 2 may hold spaces, so
// fields are counted from its closing parenthesis.
func parseProcStatCPU(stat string) time.Duration {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(u+s) * time.Second / clockTicks
}

// topology is where a benchmark's servers run: one server (R1 buckets)
// or a three-node cluster (R3 buckets).
type topology struct {
	name     string
	replicas int
	url      string // the client URL(s)
}

func startTopology(tb testing.TB, name string) *topology {
	tb.Helper()
	switch name {
	case "R1":
		return &topology{name: name, replicas: 1, url: natstest.Start(tb).URL()}
	case "R3":
		return &topology{name: name, replicas: 3, url: natstest.StartCluster(tb).URLs()}
	}
	tb.Fatalf("unknown topology %q", name)
	return nil
}

// forTopologies runs f as sub-benchmarks R1 and R3, each on servers of
// its own.
func forTopologies(b *testing.B, f func(b *testing.B, top *topology)) {
	for _, name := range []string{"R1", "R3"} {
		b.Run(name, func(b *testing.B) { f(b, startTopology(b, name)) })
	}
}

// connect opens a client connection, closed when tb ends.
func (t *topology) connect(tb testing.TB) *nats.Conn {
	tb.Helper()
	return natstest.Connect(tb, t.url)
}

// newBucket creates a lease bucket (memory storage, History 1, MaxAge
// and LimitMarkerTTL ttl) with the topology's replicas, and returns it
// opened on a new connection, with the JetStream handle of that
// connection.
func (t *topology) newBucket(tb testing.TB, bucket string, ttl time.Duration) (jetstream.KeyValue, jetstream.JetStream) {
	tb.Helper()
	nc := t.connect(tb)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	kv, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(benchContext(tb), natskvlease.BucketConfig{
		Bucket: bucket, TTL: ttl, Replicas: t.replicas,
	})
	if err != nil {
		tb.Fatalf("GetOrCreateBucket %s: %v", bucket, err)
	}
	return kv, js
}

// openKV opens bucket on the connection nc, bound to its JetStream as a
// lease needs it.
func openKV(tb testing.TB, nc *nats.Conn, bucket string) jetstream.KeyValue {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	kv, err := js.KeyValue(benchContext(tb), bucket)
	if err != nil {
		tb.Fatalf("open bucket %s: %v", bucket, err)
	}
	return natskvlease.BindJetStream(kv, js)
}

// benchContext ends with the benchmark, or after ten minutes as a
// backstop.
func benchContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// holderValue is the value a holder writes: about the size of a dlock
// record, unique per holder.
func holderValue(id string) []byte {
	return fmt.Appendf(nil, `{"owner":%q,"host":"bench","pid":%d}`, id, os.Getpid())
}

// retryFalseConflict repeats a raw revision-checked write that failed
// with a revision mismatch although nothing else writes the key: a
// replicated stream may answer so while the previous write on the key is
// still being applied (nats-server#7281). It returns the number of
// repeats.
func retryFalseConflict(tb testing.TB, what string, op func() error) int {
	for i := 0; ; i++ {
		err := op()
		if err == nil {
			return i
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) || i >= 10 {
			tb.Fatalf("%s: %v", what, err)
		}
	}
}

// percentile returns the p-th percentile (0 < p <= 100, nearest rank) of
// samples, which it sorts.
func percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	rank := int(p/100*float64(len(samples))+0.999999) - 1
	return samples[min(max(rank, 0), len(samples)-1)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// envInt and envDuration read a benchmark size from the environment.
func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration such as 60s", name, v)
	}
	return d
}

// writeSamples writes rows of tab-separated columns to file in the
// samples directory, if NATSKVLEASE_BENCH_SAMPLES names one.
func writeSamples(tb testing.TB, file string, header string, rows [][]string) {
	dir := os.Getenv(samplesEnv)
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	var sb strings.Builder
	sb.WriteString(header + "\n")
	for _, r := range rows {
		sb.WriteString(strings.Join(r, "\t") + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(sb.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// sampleFile turns a benchmark name into a file name.
func sampleFile(prefix, name string) string {
	r := strings.NewReplacer("/", "_", "=", "", " ", "_")
	return prefix + "_" + r.Replace(name) + ".tsv"
}
