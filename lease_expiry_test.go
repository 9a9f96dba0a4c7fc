package natskvlease

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// These tests pin down what a lease writes, and on which revisions, so
// that no write of it can be wiped by the expiry of the revision it was
// written on (README, "Why every write is safe"). The race itself needs
// a replicated stream with slow followers; faulttest reproduces it. Here
// each rule is checked on one server, message by message.

func TestAcquireStep(t *testing.T) {
	cases := []struct {
		name     string
		s        snapshot
		ownWrite bool
		want     step
	}{
		{"no message at all", snapshot{vacant: true, revKnown: true}, false, stepWrite},
		{"server expiry marker or PURGE", snapshot{rev: 7, vacant: true, revKnown: true}, false, stepWrite},
		{"DEL marker", snapshot{rev: 7, vacant: true, deleted: true, revKnown: true}, false, stepPurge},
		{"another holder's value", snapshot{rev: 7, value: []byte("b"), revKnown: true}, false, stepTaken},
		{"a value of ours from an earlier holding", snapshot{rev: 7, value: []byte("a"), revKnown: true}, false, stepTaken},
		{"this acquisition's write, answer lost", snapshot{rev: 7, value: []byte("a"), revKnown: true}, true, stepPurge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := acquireStep(tc.s, tc.ownWrite); got != tc.want {
				t.Fatalf("acquireStep(%+v, %v) = %v, want %v", tc.s, tc.ownWrite, got, tc.want)
			}
		})
	}
}

// lastStored reads key's latest message, markers included, from the
// bucket's stream.
func lastStored(t *testing.T, js jetstream.JetStream, bucket, key string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx := natstest.Context(t)
	s, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+key)
	if err != nil {
		t.Fatalf("last message of %s: %v", key, err)
	}
	return m
}

// TestLeaseReleaseWritesPurgeMarker: Release vacates the key with a
// revision-checked KV PURGE that carries the lease's TTL, never a DEL,
// whose expiry the server turns into a rollup.
func TestLeaseReleaseWritesPurgeMarker(t *testing.T) {
	forEachStorage(t, testLeaseReleaseWritesPurgeMarker)
}

func testLeaseReleaseWritesPurgeMarker(t *testing.T, file bool) {
	srv := natstest.Start(t)
	js, kv := testBucketOn(t, srv, 10*time.Second, file)
	ctx := natstest.Context(t)
	l := NewLease(kv, LeaseConfig{Key: "job", Value: []byte("a"), TTL: 3 * time.Second})
	mustAcquire(t, l)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	m := lastStored(t, js, kv.Bucket(), "job")
	h := m.Header
	if h.Get(kvOperationHeader) != "PURGE" || h.Get(jetstream.MsgRollup) != "sub" || h.Get(jetstream.MsgTTLHeader) != "3s" {
		t.Fatalf("release marker headers %v; want KV-Operation PURGE, Nats-Rollup sub, Nats-TTL 3s", h)
	}
	if got := l.Revision(); got != m.Sequence {
		t.Fatalf("Revision() = %d after Release, marker is %d", got, m.Sequence)
	}
	// Watchers see the release as a purge: a vacancy.
	w, err := kv.Watch(ctx, "job")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	if e := <-w.Updates(); e == nil || e.Operation() != jetstream.KeyValuePurge || e.Revision() != m.Sequence {
		t.Fatalf("watch's first entry = %v; want the purge marker at %d", e, m.Sequence)
	}
}

// spyWrites counts what one operation sends on the key's subject and to
// the JetStream API, up to a sentinel the caller's connection publishes
// after it (messages from one connection arrive in order).
type spyWrites struct{ puts, purges, deletes, api int }

func countWrites(t *testing.T, sub *nats.Subscription, keySubj, sentinelSubj string) spyWrites {
	t.Helper()
	var c spyWrites
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("spy: %v", err)
		}
		switch {
		case m.Subject == sentinelSubj:
			return c
		case m.Subject == keySubj:
			switch m.Header.Get(kvOperationHeader) {
			case "PURGE":
				c.purges++
			case "DEL":
				c.deletes++
			default:
				c.puts++
			}
		case strings.HasPrefix(m.Subject, "$JS.API."):
			c.api++
		}
	}
}

// TestLeaseAcquireOverDeleteMarkerPurgesFirst: a DEL marker written by
// someone else (kv.Delete) is purged, revision-checked, before the lease
// writes on it; the lease never writes on the DEL itself.
func TestLeaseAcquireOverDeleteMarkerPurgesFirst(t *testing.T) {
	forEachStorage(t, testLeaseAcquireOverDeleteMarkerPurgesFirst)
}

func testLeaseAcquireOverDeleteMarkerPurgesFirst(t *testing.T, file bool) {
	srv := natstest.Start(t)
	js, kv := testBucketOn(t, srv, 10*time.Second, file)
	ctx := natstest.Context(t)
	rev, err := kv.Create(ctx, "job", []byte("someone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "job", jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	del := lastStored(t, js, kv.Bucket(), "job").Sequence

	own := openBucket(t, srv, kv.Bucket())
	l := NewLease(own, leaseCfg("job", "a"))
	prepared(t, l) // learn the bucket's policy before counting
	sub := spyAll(t, srv)
	tok := mustAcquire(t, l)
	if _, err := own.Put(ctx, "sentinel", nil); err != nil {
		t.Fatal(err)
	}
	c := countWrites(t, sub, "$KV."+kv.Bucket()+".job", "$KV."+kv.Bucket()+".sentinel")
	if c.purges != 1 || c.puts != 1 || c.deletes != 0 {
		t.Fatalf("acquire over a DEL marker sent %+v; want one purge, then one write", c)
	}
	if tok <= del+1 {
		t.Fatalf("token %d; want it written on the purge marker that followed the DEL at %d", tok, del)
	}
	if m := lastStored(t, js, kv.Bucket(), "job"); m.Sequence != tok || string(m.Data) != "a" {
		t.Fatalf("stored %d %q; want the lease's write at %d", m.Sequence, m.Data, tok)
	}
}

// TestLeaseNeverWritesOverItsOwnLapsedValue: once a holding has ended at
// its deadline, the value it left on the server is not written over, even
// though it is the lease's own: its expiry is due, and would wipe a write
// placed on it. The lease waits for the server's expiry marker instead.
func TestLeaseNeverWritesOverItsOwnLapsedValue(t *testing.T) {
	forEachStorage(t, testLeaseNeverWritesOverItsOwnLapsedValue)
}

func testLeaseNeverWritesOverItsOwnLapsedValue(t *testing.T, file bool) {
	srv := natstest.Start(t)
	_, kv := testBucketOn(t, srv, 5*time.Second, file)
	ctx := natstest.Context(t)
	own := openBucket(t, srv, kv.Bucket())
	l := NewLease(own, leaseCfg("job", "a"))
	first := mustAcquire(t, l)
	select {
	case <-l.Done(): // the safety deadline, a tenth of the TTL before the server's expiry
	case <-ctx.Done():
		t.Fatal("the holding never lapsed")
	}
	sub := spyAll(t, srv)
	ok, err := l.Acquire(ctx)
	if _, perr := own.Put(ctx, "sentinel", nil); perr != nil {
		t.Fatal(perr)
	}
	c := countWrites(t, sub, "$KV."+kv.Bucket()+".job", "$KV."+kv.Bucket()+".sentinel")
	if ok {
		// Only right if the server expired the key meanwhile (a slow
		// machine) and the lease wrote on its marker, the revision after
		// the lapsed value; a write straight over that value would be
		// the very next revision.
		if tok := l.Token(); tok == first+1 {
			t.Fatalf("Acquire wrote directly over its own lapsed value (%d → %d)", first, tok)
		}
		t.Logf("the server expired the key before Acquire ran; the lease wrote on its marker")
		return
	} else if err != nil || c.puts != 0 || c.purges != 0 {
		t.Fatalf("Acquire = %v, %v with %+v; want (false, nil) and no write", ok, err, c)
	}
	// The server's expiry marker frees the key; then the lease takes it.
	if err := l.AcquireWait(ctx); err != nil {
		t.Fatal(err)
	}
	if tok := l.Token(); tok <= first+1 {
		t.Fatalf("token %d; want a write on the expiry marker after %d", tok, first)
	}
}

// TestLeaseLostAcquireAnswerIsPurged: an acquisition whose write was
// applied but whose answer was lost does not adopt that write (which of
// its attempts it was, and so when its TTL began, is unknown): it purges
// it and writes again on the purge marker.
func TestLeaseLostAcquireAnswerIsPurged(t *testing.T) {
	// The fault must take effect: the answer to the first write lost. A
	// chunk already read by the proxy when the black-hole goes on can
	// still get through; such a try proves nothing, and is made again.
	for try := 1; ; try++ {
		if lostAnswerPurged(t) {
			return
		}
		if try == 3 {
			t.Fatal("the acquisition's answer got through the black-hole in 3 tries: the fault never took effect")
		}
		t.Logf("try %d: the answer got through; trying again", try)
	}
}

// lostAnswerPurged runs the scenario once and reports whether its fault
// took effect; it fails the test if the lease then misbehaved.
func lostAnswerPurged(t *testing.T) bool {
	t.Helper()
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 4*time.Second)
	ctx := natstest.Context(t)
	l, p := faultyLease(t, srv, kv.Bucket(), leaseCfg("job", "a"))
	released := mustAcquire(t, l)
	if err := l.Release(ctx); err != nil { // the lease now knows the vacancy: Acquire writes at once
		t.Fatal(err)
	}
	p.BlackholeServerToClient(true)
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() { ok, err := l.Acquire(ctx); done <- result{ok, err} }()
	var applied uint64
	natstest.Eventually(t, 3*time.Second, "the first write applied on the server", func() bool {
		e, err := kv.Get(ctx, "job")
		if err == nil && e.Revision() > released {
			applied = e.Revision()
			return true
		}
		return false
	})
	p.BlackholeServerToClient(false)
	r := <-done
	if !r.ok || r.err != nil {
		t.Fatalf("Acquire = %v, %v; want it to resolve the lost answer and hold", r.ok, r.err)
	}
	tok := l.Token()
	if tok == applied {
		return false // its answer arrived: nothing was lost
	}
	if tok <= applied+1 {
		t.Fatalf("token %d; want a fresh write after purging the unanswered one at %d", tok, applied)
	}
	if m := lastStored(t, js, kv.Bucket(), "job"); m.Sequence != tok || string(m.Data) != "a" {
		t.Fatalf("stored %d %q, want the lease's write at %d", m.Sequence, m.Data, tok)
	}
	return true
}

// TestLeaseAbandonedAcquireIsFenced: an acquisition given up while its
// write is still in flight purges the revision that write expected, so
// that the write can no longer apply, or purges the write if it did.
func TestLeaseAbandonedAcquireIsFenced(t *testing.T) {
	srv := natstest.Start(t)
	_, kv := testBucket(t, srv, 10*time.Second)
	l, p := faultyLease(t, srv, kv.Bucket(), leaseCfg("job", "a"))
	ctx := natstest.Context(t)
	prepared(t, l)
	p.SetDelay(400 * time.Millisecond)
	actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	ok, err := l.Acquire(actx)
	cancel()
	p.SetDelay(0)
	if ok || err == nil {
		t.Fatalf("Acquire = %v, %v; want a context error", ok, err)
	}
	// Whatever the delayed write did, the key ends vacant: nobody holds it.
	natstest.Eventually(t, 5*time.Second, "the key vacant", func() bool {
		_, err := kv.Get(ctx, "job")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	b := NewLease(openBucket(t, srv, kv.Bucket()), leaseCfg("job", "b"))
	mustAcquire(t, b)
}

// prepared makes l learn its bucket's TTL policy, as its first operation
// would, so that a test counts only what the operation under test sends.
func prepared(t *testing.T, l *Lease) {
	t.Helper()
	l.opMu.Lock()
	defer l.opMu.Unlock()
	if err := l.prepare(natstest.Context(t)); err != nil {
		t.Fatal(err)
	}
}

// forEachStorage runs test for a memory and a file bucket, in parallel.
func forEachStorage(t *testing.T, test func(t *testing.T, file bool)) {
	for _, file := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "file"}[file], func(t *testing.T) {
			t.Parallel()
			test(t, file)
		})
	}
}
