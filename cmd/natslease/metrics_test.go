package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// freeAddr reserves a loopback address for a --metrics listener.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// scrape reads http://addr/metrics, or "" if it cannot.
func scrape(addr string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// sample returns the lines of a scrape that start with one of prefixes.
func sample(scraped string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(scraped, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestLockMetricsDuringHandoff: two natslease lock processes with
// --metrics on one key. The first holds; the second waits, then takes
// the lock when the first's command exits. Each process's /metrics shows
// what it did: holdings, refused and successful acquisitions, the
// release, and the handoff as the waiter saw it.
func TestLockMetricsDuringHandoff(t *testing.T) {
	srv := natstest.Start(t)
	dir := t.TempDir()
	addrA, addrB := freeAddr(t), freeAddr(t)
	const key = "report"
	a := start(t, "lock", "--server", srv.URL(), "--ttl", "3s", "--metrics", addrA, key, "--",
		"sh", "-c", `touch "$0"; while [ ! -f "$1" ]; do sleep 0.05; done`, dir+"/a-runs", dir+"/a-stop")
	natstest.Eventually(t, 15*time.Second, "A's command to run", func() bool { return fileExists(dir + "/a-runs") })
	heldA := fmt.Sprintf(`natskvlease_held{key=%q} 1`, key)
	natstest.Eventually(t, 5*time.Second, "A's /metrics to show it holds", func() bool { return strings.Contains(scrape(addrA), heldA) })

	b := start(t, "lock", "--server", srv.URL(), "--ttl", "3s", "--metrics", addrB, key, "--",
		"sh", "-c", `touch "$0"; while [ ! -f "$1" ]; do sleep 0.05; done`, dir+"/b-runs", dir+"/b-stop")
	natstest.Eventually(t, 10*time.Second, "B to wait", func() bool {
		return strings.Contains(scrape(addrB), fmt.Sprintf(`natskvlease_operations_total{key=%q,op="acquire",result="taken"}`, key))
	})
	t.Logf("B's /metrics while it waits:\n%s", sample(scrape(addrB), "natskvlease_operations_total", "natskvlease_held"))

	if err := touch(dir + "/a-stop"); err != nil { // A's command exits: A releases
		t.Fatal(err)
	}
	natstest.Eventually(t, 15*time.Second, "B's command to run", func() bool { return fileExists(dir + "/b-runs") })
	natstest.Eventually(t, 5*time.Second, "B's /metrics to show the handoff", func() bool {
		return strings.Contains(scrape(addrB), fmt.Sprintf(`natskvlease_handoff_seconds_count{key=%q} 1`, key))
	})
	got := scrape(addrB)
	t.Logf("B's /metrics after the handoff:\n%s", sample(got, "natskvlease_held", "natskvlease_acquisitions_total", "natskvlease_operations_total", "natskvlease_handoff_seconds"))
	for _, want := range []string{
		fmt.Sprintf(`natskvlease_held{key=%q} 1`, key),
		fmt.Sprintf(`natskvlease_acquisitions_total{key=%q} 1`, key),
		fmt.Sprintf(`natskvlease_operations_total{key=%q,op="acquire",result="ok"} 1`, key),
	} {
		if !strings.Contains(got, want) {
			t.Errorf("B's /metrics lacks %q", want)
		}
	}
	if code := a.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("A exited %d; stderr %s", code, a.stderrString())
	}
	if err := touch(dir + "/b-stop"); err != nil {
		t.Fatal(err)
	}
	if code := b.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("B exited %d; stderr %s", code, b.stderrString())
	}
}

func touch(path string) error { return os.WriteFile(path, nil, 0o644) }
