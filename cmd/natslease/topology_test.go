package main

import (
	"strings"
	"testing"
	"time"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// The help's example and the README's, one after the other on a fresh
// server: one bucket hosts both TTLs.
func TestLockTwoTTLsOneBucket(t *testing.T) {
	srv := natstest.Start(t)
	for _, args := range [][]string{
		{"lock", "--server", srv.URL(), "demo", "--", "true"},
		{"lock", "--server", srv.URL(), "--ttl", "30s", "nightly-report", "--", "true"},
		{"lock", "--server", srv.URL(), "--ttl", "1s", "demo", "--", "true"},
	} {
		if code, stdout, stderr := runNatslease(t, 15*time.Second, args...); code != 0 {
			t.Fatalf("natslease %v: status %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}

// natslease on a leaf node reaches the hub's bucket with --js-domain.
func TestLockAndStatusThroughLeafNode(t *testing.T) {
	hl := natstest.StartHubLeaf(t, false)
	url := hl.Leaf.URL()
	holder := holdLock(t, url, "leaf.key", "--js-domain", natstest.HubDomain, "--ttl", "2s")
	code, stdout, stderr := runNatslease(t, 10*time.Second, "status", "--server", url, "--js-domain", natstest.HubDomain, "leaf.key")
	if code != 0 || !strings.Contains(stdout, "held") || !strings.Contains(stdout, "lock TTL 2s") {
		t.Fatalf("status through the leaf node: %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// The hub's own clients see the same lock.
	code, stdout, stderr = runNatslease(t, 10*time.Second, "lock", "--server", hl.Hub.URL(), "--wait", "0", "leaf.key", "--", "true")
	if code != exitTempFail {
		t.Fatalf("lock on the hub while held through the leaf: %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	signalProc(t, holder, 15)
	holder.wait(t, 10*time.Second)
	code, stdout, stderr = runNatslease(t, 10*time.Second, "status", "--server", url, "--js-domain", natstest.HubDomain, "leaf.key")
	if code != exitFree || !strings.Contains(stdout, "free") {
		t.Fatalf("status after release: %d (want %d: free), stdout %q, stderr %q", code, exitFree, stdout, stderr)
	}
}
