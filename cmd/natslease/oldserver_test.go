package main

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// fakeOldServer speaks just enough of the NATS protocol to let a client
// connect, announcing version 2.10.0, too old for per-message TTLs.
func fakeOldServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				_, _ = c.Write([]byte(`INFO {"server_id":"OLD","server_name":"old","version":"2.10.0","proto":1,"host":"127.0.0.1","port":4222,"max_payload":1048576,"headers":true}` + "\r\n"))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			})
		}
	})
	return "nats://" + l.Addr().String()
}

func TestServerTooOld(t *testing.T) {
	url := fakeOldServer(t)
	for _, args := range [][]string{
		{"lock", "--server", url, "k", "--", "true"},
		{"elect", "--server", url, "k", "--", "true"},
		{"status", "--server", url, "k"},
	} {
		code, _, stderr := runNatslease(t, 15*time.Second, args...)
		if code != 1 || !strings.Contains(stderr, "version 2.10.0; natslease needs 2.11.0 or newer") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: status %d, stderr %q; want 1 and one line naming the version", args[0], code, stderr)
		}
	}
}

func TestElectExitsWithCommandStatus(t *testing.T) {
	srv := natstest.Start(t)
	code, _, stderr := runNatslease(t, 20*time.Second, "elect", "--server", srv.URL(), "--ttl", "2s", "once", "--", "sh", "-c", "exit 4")
	if code != 4 {
		t.Fatalf("status %d, want 4; stderr %q", code, stderr)
	}
	// It resigned: the election is free at once.
	code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", srv.URL(), "--kind", "election", "once")
	if code != exitFree || !strings.Contains(stdout, "free") {
		t.Errorf("after the command exited: status %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
