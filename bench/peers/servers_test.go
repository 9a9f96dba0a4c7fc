package peers

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// The three servers every benchmark compares. Their names prefix the
// metrics: "<system>-<figure>".
const (
	sysNATS        = "nats"         // nats-server, memory buckets
	sysEtcdFsync   = "etcd-fsync"   // etcd, fsync on (its default)
	sysEtcdNoFsync = "etcd-nofsync" // etcd, UnsafeNoFsync
)

// childEnv, set to "<system> <dir>", turns the test binary into that
// server (see runChild): BenchmarkIdleLocks runs its servers in child
// processes so that the client's CPU and the server's are measured
// apart.
const childEnv = "PEERS_CHILD_SERVER"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(runChild(v))
	}
	code := m.Run()
	stopShared()
	os.Exit(code)
}

// natsServer is an embedded nats-server with JetStream.
type natsServer struct {
	srv *server.Server
	dir string
}

func startNATS(dir string) (*natsServer, error) {
	s, err := server.NewServer(&server.Options{
		ServerName: "peers",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   dir,
	})
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server not ready within 10s")
	}
	return &natsServer{srv: s, dir: dir}, nil
}

func (n *natsServer) url() string { return n.srv.ClientURL() }

func (n *natsServer) stop() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// etcdServer is an embedded single-member etcd.
type etcdServer struct {
	e      *embed.Etcd
	client string // client URL
}

// freePort asks the kernel for a free loopback port. etcd must know its
// ports before it starts (they go into the initial cluster), so it
// cannot be given port 0.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(dir string, fsync bool) (*etcdServer, error) {
	var lastErr error
	for range 5 { // a port taken between freePort and the listen: retry
		cp, err1 := freePort()
		pp, err2 := freePort()
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("free ports: %v %v", err1, err2)
		}
		cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(cp)}
		pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(pp)}
		cfg := embed.NewConfig()
		cfg.Name = "peers"
		cfg.Dir = dir
		cfg.ListenClientUrls = []url.URL{cu}
		cfg.AdvertiseClientUrls = []url.URL{cu}
		cfg.ListenPeerUrls = []url.URL{pu}
		cfg.AdvertisePeerUrls = []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.LogLevel = "error"
		// The errors it logs when it is closed are expected; keep them
		// out of the benchmark output.
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = !fsync
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			_ = os.RemoveAll(dir)
			_ = os.MkdirAll(dir, 0o700)
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return &etcdServer{e: e, client: cu.String()}, nil
		case err := <-e.Err():
			e.Close()
			return nil, err
		case <-time.After(30 * time.Second):
			e.Close()
			return nil, fmt.Errorf("etcd not ready within 30s")
		}
	}
	return nil, lastErr
}

func (s *etcdServer) stop() { s.e.Close() }

// servers are the three systems' servers, started once per process for
// the benchmarks that share them (all but BenchmarkIdleLocks).
type servers struct {
	nats              *natsServer
	etcd              map[string]*etcdServer // by system
	natsURL, etcdURLs map[string]string
}

var (
	sharedOnce sync.Once
	shared     *servers
	sharedErr  error
	sharedDirs []string
)

func startShared(tb testing.TB) *servers {
	tb.Helper()
	sharedOnce.Do(func() {
		mk := func(name string) string {
			d, err := os.MkdirTemp("", "peers-"+name+"-")
			if err != nil {
				sharedErr = err
			}
			sharedDirs = append(sharedDirs, d)
			return d
		}
		s := &servers{etcd: map[string]*etcdServer{}}
		if s.nats, sharedErr = startNATS(mk("nats")); sharedErr != nil {
			return
		}
		for _, sys := range []string{sysEtcdFsync, sysEtcdNoFsync} {
			e, err := startEtcd(mk(sys), sys == sysEtcdFsync)
			if err != nil {
				sharedErr = fmt.Errorf("%s: %w", sys, err)
				return
			}
			s.etcd[sys] = e
		}
		shared = s
	})
	if sharedErr != nil {
		tb.Fatalf("start servers: %v", sharedErr)
	}
	return shared
}

func stopShared() {
	if shared != nil {
		for _, e := range shared.etcd {
			e.stop()
		}
		shared.nats.stop()
	}
	for _, d := range sharedDirs {
		_ = os.RemoveAll(d)
	}
}

// runChild serves one system on random loopback ports, prints its
// client URL on stdout, and stops when stdin is closed (the parent
// ended).
func runChild(spec string) int {
	sys, dir, ok := strings.Cut(spec, " ")
	if !ok {
		fmt.Fprintln(os.Stderr, "child server: bad spec", spec)
		return 1
	}
	var u string
	var stop func()
	switch sys {
	case sysNATS:
		n, err := startNATS(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child nats:", err)
			return 1
		}
		u, stop = n.url(), n.stop
	default:
		e, err := startEtcd(dir, sys == sysEtcdFsync)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child etcd:", err)
			return 1
		}
		u, stop = e.client, e.stop
	}
	fmt.Println(u)
	_, _ = io.Copy(io.Discard, os.Stdin)
	stop()
	return 0
}

// childServer is a server in a process of its own.
type childServer struct {
	cmd *exec.Cmd
	url string
}

func startChild(tb testing.TB, sys string) *childServer {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+sys+" "+tb.TempDir())
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
		tb.Fatalf("start child %s: %v", sys, err)
	}
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("child %s did not report its URL: %v", sys, err)
	}
	return &childServer{cmd: cmd, url: strings.TrimSpace(line)}
}

// cpu returns the child's user+system CPU time so far, from
// /proc/<pid>/stat (USER_HZ = 100 ticks a second on Linux).
func (c *childServer) cpu() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	stat := string(data)
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100
}

// connectNATS opens a connection, closed when tb ends.
func connectNATS(tb testing.TB, u string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(u, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect %s: %v", u, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

func jetStream(tb testing.TB, nc *nats.Conn) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

// connectEtcd opens an etcd client (a gRPC connection of its own),
// closed when tb ends unless closed before. opts add gRPC dial options.
func connectEtcd(tb testing.TB, u string, opts ...grpc.DialOption) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{u},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: opts,
	})
	if err != nil {
		tb.Fatalf("etcd client %s: %v", u, err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

// benchContext ends with the benchmark, or after 20 minutes.
func benchContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// percentile returns the p-th percentile (nearest rank) of samples,
// which it sorts.
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

// envInts reads a comma-separated list of sizes, envDuration a
// duration: the knobs that size the benchmarks.
func envInts(tb testing.TB, name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			tb.Fatalf("%s=%q: want positive integers separated by commas", name, v)
		}
		out = append(out, n)
	}
	return out
}

func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration such as 30s", name, v)
	}
	return d
}

// etcdSystems are the two etcd variants, in a fixed order.
var etcdSystems = []string{sysEtcdFsync, sysEtcdNoFsync}

// rotate runs one round of fns (named by names), starting at a
// different one each round, so that no system always goes first.
func rotate(round int, names []string, fn func(name string)) {
	for k := range names {
		fn(names[(round+k)%len(names)])
	}
}
