package natskvlease

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// kvopsFixture is a fresh lease bucket (MaxAge 10s, markers on) on its own
// server, with KVOps on its bound KeyValue.
type kvopsFixture struct {
	srv *natstest.Server
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	ops *KVOps
	ctx context.Context
}

func newKVOpsFixture(t *testing.T) *kvopsFixture {
	t.Helper()
	srv := natstest.Start(t)
	js, kv := testBucket(t, srv, 10*time.Second)
	ops := NewKVOps(kv, nil)
	if ops.js == nil {
		t.Fatal("KVOps on a bound KeyValue has no JetStream")
	}
	return &kvopsFixture{srv: srv, js: js, kv: kv, ops: ops, ctx: natstest.Context(t)}
}

// storedMsg reads revision rev straight from the bucket's stream.
func (f *kvopsFixture) storedMsg(t *testing.T, rev uint64) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := f.js.Stream(f.ctx, "KV_"+f.kv.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(f.ctx, rev)
	if err != nil {
		t.Fatalf("GetMsg(%d): %v", rev, err)
	}
	return m
}

func (f *kvopsFixture) values(t *testing.T) uint64 {
	t.Helper()
	st, err := f.kv.Status(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Values()
}

// nextEntry returns the next non-nil watch entry, failing after timeout.
func nextEntry(t *testing.T, w jetstream.KeyWatcher, timeout time.Duration) (jetstream.KeyValueEntry, time.Time) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				t.Fatal("watcher closed")
			}
			if e != nil {
				return e, time.Now()
			}
		case <-timer.C:
			t.Fatalf("no watch entry within %v", timeout)
		}
	}
}

func TestKVOpsCreateUpdateGet(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev1, err := ops.Create(ctx, "k", []byte("v1"))
	if err != nil || rev1 == 0 {
		t.Fatalf("Create = (%d, %v)", rev1, err)
	}
	e, err := ops.Get(ctx, "k")
	if err != nil || e.Revision() != rev1 || string(e.Value()) != "v1" || e.Operation() != jetstream.KeyValuePut {
		t.Fatalf("Get after Create = (%v, %v)", e, err)
	}

	// Create on an existing key fails, even with the same value: only a
	// write whose outcome was unknown may be adopted.
	for _, v := range []string{"other", "v1"} {
		_, err = ops.Create(ctx, "k", []byte(v))
		if !errors.Is(err, jetstream.ErrKeyExists) {
			t.Fatalf("Create(%q) on existing key = %v, want ErrKeyExists", v, err)
		}
	}

	rev2, err := ops.Update(ctx, "k", []byte("v2"), rev1)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("Update = (%d, %v), want a revision after %d", rev2, err, rev1)
	}
	for _, stale := range []uint64{rev1, 0, rev2 + 1000} {
		_, err = ops.Update(ctx, "k", []byte("v3"), stale)
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			t.Fatalf("Update at revision %d (latest %d) = %v, want ErrKeyRevisionMismatch", stale, rev2, err)
		}
	}
	// Same value as stored, wrong revision: still a mismatch.
	if _, err = ops.Update(ctx, "k", []byte("v2"), rev1); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("stale Update with the stored value = %v, want ErrKeyRevisionMismatch", err)
	}
	e, err = ops.Get(ctx, "k")
	if err != nil || e.Revision() != rev2 || string(e.Value()) != "v2" {
		t.Fatalf("failed writes changed the key: Get = (%v, %v)", e, err)
	}

	if _, err := ops.Get(ctx, "never.written"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get(never written) = %v, want ErrKeyNotFound", err)
	}
	if ops.KV() != f.kv {
		t.Fatal("KV() is not the KeyValue given to NewKVOps")
	}
}

func TestKVOpsDelete(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev, err := ops.Create(ctx, "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ops.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := ops.Get(ctx, "k"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrKeyNotFound", err)
	}
	// Create works over a delete marker.
	rev2, err := ops.Create(ctx, "k", []byte("again"))
	if err != nil || rev2 <= rev {
		t.Fatalf("Create after Delete = (%d, %v)", rev2, err)
	}
	// Delete needs no existing key.
	if err := ops.Delete(ctx, "never.written"); err != nil {
		t.Fatalf("Delete(never written): %v", err)
	}
}

func TestKVOpsDeleteWithRevision(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev1, err := ops.Create(ctx, "k", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	rev2, err := ops.Update(ctx, "k", []byte("v2"), rev1)
	if err != nil {
		t.Fatal(err)
	}
	for _, wrong := range []uint64{rev1, rev2 + 1} {
		if err := ops.DeleteWithRevision(ctx, "k", wrong); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			t.Fatalf("DeleteWithRevision(%d), latest %d = %v, want ErrKeyRevisionMismatch", wrong, rev2, err)
		}
	}
	if e, err := ops.Get(ctx, "k"); err != nil || e.Revision() != rev2 {
		t.Fatalf("a refused delete changed the key: (%v, %v)", e, err)
	}
	if err := ops.DeleteWithRevision(ctx, "k", rev2); err != nil {
		t.Fatalf("DeleteWithRevision(latest): %v", err)
	}
	if _, err := ops.Get(ctx, "k"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get after DeleteWithRevision = %v, want ErrKeyNotFound", err)
	}
}

func TestKVOpsWatch(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev1, err := ops.Create(ctx, "k", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.Create(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	w, err := ops.Watch(ctx, "k")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Stop()

	e, _ := nextEntry(t, w, 5*time.Second)
	if e.Key() != "k" || e.Revision() != rev1 || string(e.Value()) != "v1" || e.Operation() != jetstream.KeyValuePut {
		t.Fatalf("first entry = %s rev %d %q %v, want the latest (rev %d v1)", e.Key(), e.Revision(), e.Value(), e.Operation(), rev1)
	}
	rev2, err := ops.Update(ctx, "k", []byte("v2"), rev1)
	if err != nil {
		t.Fatal(err)
	}
	// Changes to other keys are not seen.
	if _, err := f.kv.Put(ctx, "other", []byte("y")); err != nil {
		t.Fatal(err)
	}
	e, _ = nextEntry(t, w, 5*time.Second)
	if e.Revision() != rev2 || string(e.Value()) != "v2" {
		t.Fatalf("second entry rev %d %q, want rev %d v2", e.Revision(), e.Value(), rev2)
	}
	if err := ops.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	e, _ = nextEntry(t, w, 5*time.Second)
	if e.Operation() != jetstream.KeyValueDelete || e.Revision() <= rev2 {
		t.Fatalf("third entry %v rev %d, want a delete marker after %d", e.Operation(), e.Revision(), rev2)
	}

	// A watch on a deleted key starts with its marker.
	w2, err := ops.Watch(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Stop()
	if e2, _ := nextEntry(t, w2, 5*time.Second); e2.Operation() != jetstream.KeyValueDelete || e2.Revision() != e.Revision() {
		t.Fatalf("watch on a deleted key starts with %v rev %d, want the delete marker rev %d", e2.Operation(), e2.Revision(), e.Revision())
	}
}

func TestKVOpsInvalidKey(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops
	rev, err := ops.Create(ctx, "valid", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	before := f.values(t)
	for _, key := range []string{"", "a..b", ".a", "a.", "a b", "*", "a.>", "ключ"} {
		t.Run(shortQ(key), func(t *testing.T) {
			for name, call := range map[string]func() error{
				"Create": func() error { _, err := ops.Create(ctx, key, []byte("v")); return err },
				"Update": func() error { _, err := ops.Update(ctx, key, []byte("v"), rev); return err },
				"Delete": func() error { return ops.Delete(ctx, key) },
				"DeleteWithRevision": func() error {
					return ops.DeleteWithRevision(ctx, key, rev)
				},
				"Get":   func() error { _, err := ops.Get(ctx, key); return err },
				"Watch": func() error { _, err := ops.Watch(ctx, key); return err },
			} {
				err := call()
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("%s(%q) = %v, want ErrInvalidConfig", name, key, err)
				}
				checkConfigErr(t, err, "key")
			}
		})
	}
	if after := f.values(t); after != before {
		t.Fatalf("invalid keys wrote to the bucket: %d values, was %d", after, before)
	}
}

func TestKVOpsNilKeyValue(t *testing.T) {
	ctx := context.Background()
	var nilOps *KVOps
	for name, ops := range map[string]*KVOps{"NewKVOps(nil, nil)": NewKVOps(nil, nil), "nil *KVOps": nilOps} {
		t.Run(name, func(t *testing.T) {
			calls := map[string]func() error{
				"Create":             func() error { _, err := ops.Create(ctx, "k", []byte("v")); return err },
				"Update":             func() error { _, err := ops.Update(ctx, "k", []byte("v"), 1); return err },
				"Delete":             func() error { return ops.Delete(ctx, "k") },
				"DeleteWithRevision": func() error { return ops.DeleteWithRevision(ctx, "k", 1) },
				"Get":                func() error { _, err := ops.Get(ctx, "k"); return err },
				"Watch":              func() error { _, err := ops.Watch(ctx, "k"); return err },
			}
			for op, call := range calls {
				err := call()
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("%s = %v, want ErrInvalidConfig", op, err)
				}
				checkConfigErr(t, err, "KeyValue")
			}
		})
	}
	if NewKVOps(nil, nil).KV() != nil {
		t.Fatal("KV() of NewKVOps(nil, nil) is not nil")
	}
}

// lostAckKV applies a write and then reports a timeout, as when the
// server's answer is lost, for the first `lose` calls of each kind. With
// `race` set, the first call instead lets another writer change the key
// and times out without applying anything.
type lostAckKV struct {
	jetstream.KeyValue
	mu    sync.Mutex
	lose  int
	race  func()
	calls map[string]int
}

func (k *lostAckKV) hit(op string) (lose bool, race func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.calls == nil {
		k.calls = map[string]int{}
	}
	k.calls[op]++
	if k.calls[op] <= k.lose {
		return true, k.race
	}
	return false, nil
}

func (k *lostAckKV) count(op string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.calls[op]
}

func (k *lostAckKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	lose, race := k.hit("Create")
	switch {
	case lose && race != nil:
		race()
		return 0, nats.ErrTimeout
	case lose:
		if _, err := k.KeyValue.Create(ctx, key, value, opts...); err != nil {
			return 0, err
		}
		return 0, nats.ErrTimeout
	}
	return k.KeyValue.Create(ctx, key, value, opts...)
}

func (k *lostAckKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	lose, race := k.hit("Update")
	switch {
	case lose && race != nil:
		race()
		return 0, context.DeadlineExceeded
	case lose:
		if _, err := k.KeyValue.Update(ctx, key, value, rev); err != nil {
			return 0, err
		}
		return 0, context.DeadlineExceeded
	}
	return k.KeyValue.Update(ctx, key, value, rev)
}

func (k *lostAckKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	lose, race := k.hit("Delete")
	switch {
	case lose && race != nil:
		race()
		return nats.ErrNoResponders
	case lose:
		if err := k.KeyValue.Delete(ctx, key, opts...); err != nil {
			return err
		}
		return nats.ErrNoResponders
	}
	return k.KeyValue.Delete(ctx, key, opts...)
}

// TestKVOpsResolvesLostAcks: a write whose answer was lost is retried; the
// retry conflicts with the write itself, and KVOps adopts it after reading
// the key back. A conflict with someone else's write is not adopted.
func TestKVOpsResolvesLostAcks(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx := f.ctx
	raw := f.kv

	t.Run("Create adopted", func(t *testing.T) {
		lk := &lostAckKV{KeyValue: raw, lose: 1}
		rev, err := NewKVOps(lk, nil).Create(ctx, "c1", []byte("mine"))
		if err != nil {
			t.Fatalf("Create with a lost ack = %v, want the earlier attempt adopted", err)
		}
		e, err := raw.Get(ctx, "c1")
		if err != nil || e.Revision() != rev || string(e.Value()) != "mine" {
			t.Fatalf("Create returned rev %d; key is (%v, %v)", rev, e, err)
		}
		if n := lk.count("Create"); n != 2 {
			t.Fatalf("Create attempts = %d, want 2", n)
		}
	})
	t.Run("Create lost to another writer", func(t *testing.T) {
		lk := &lostAckKV{KeyValue: raw, lose: 1, race: func() {
			if _, err := raw.Create(ctx, "c2", []byte("theirs")); err != nil {
				t.Error(err)
			}
		}}
		_, err := NewKVOps(lk, nil).Create(ctx, "c2", []byte("mine"))
		if !errors.Is(err, jetstream.ErrKeyExists) {
			t.Fatalf("Create after another writer won = %v, want ErrKeyExists", err)
		}
	})
	t.Run("Create timeout not applied is retried", func(t *testing.T) {
		lk := &lostAckKV{KeyValue: raw, lose: 1, race: func() {}}
		rev, err := NewKVOps(lk, nil).Create(ctx, "c3", []byte("mine"))
		if err != nil || rev == 0 {
			t.Fatalf("Create = (%d, %v)", rev, err)
		}
		if e, err := raw.Get(ctx, "c3"); err != nil || e.Revision() != rev {
			t.Fatalf("key = (%v, %v), want rev %d", e, err, rev)
		}
	})

	t.Run("Update adopted", func(t *testing.T) {
		rev1, err := raw.Create(ctx, "u1", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		lk := &lostAckKV{KeyValue: raw, lose: 1}
		rev, err := NewKVOps(lk, nil).Update(ctx, "u1", []byte("v2"), rev1)
		if err != nil {
			t.Fatalf("Update with a lost ack = %v, want the earlier attempt adopted", err)
		}
		e, err := raw.Get(ctx, "u1")
		if err != nil || e.Revision() != rev || rev <= rev1 || string(e.Value()) != "v2" {
			t.Fatalf("Update returned rev %d; key is (%v, %v)", rev, e, err)
		}
	})
	t.Run("Update lost to another writer", func(t *testing.T) {
		rev1, err := raw.Create(ctx, "u2", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		lk := &lostAckKV{KeyValue: raw, lose: 1, race: func() {
			if _, err := raw.Update(ctx, "u2", []byte("theirs"), rev1); err != nil {
				t.Error(err)
			}
		}}
		_, err = NewKVOps(lk, nil).Update(ctx, "u2", []byte("mine"), rev1)
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			t.Fatalf("Update after another writer won = %v, want ErrKeyRevisionMismatch", err)
		}
	})

	t.Run("DeleteWithRevision adopted", func(t *testing.T) {
		rev1, err := raw.Create(ctx, "d1", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		lk := &lostAckKV{KeyValue: raw, lose: 1}
		if err := NewKVOps(lk, nil).DeleteWithRevision(ctx, "d1", rev1); err != nil {
			t.Fatalf("DeleteWithRevision with a lost ack = %v, want nil", err)
		}
		if _, err := raw.Get(ctx, "d1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("Get = %v, want ErrKeyNotFound", err)
		}
		if n := lk.count("Delete"); n != 2 {
			t.Fatalf("Delete attempts = %d, want 2", n)
		}
	})
	t.Run("DeleteWithRevision lost to another writer", func(t *testing.T) {
		rev1, err := raw.Create(ctx, "d2", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		lk := &lostAckKV{KeyValue: raw, lose: 1, race: func() {
			if _, err := raw.Update(ctx, "d2", []byte("theirs"), rev1); err != nil {
				t.Error(err)
			}
		}}
		if err := NewKVOps(lk, nil).DeleteWithRevision(ctx, "d2", rev1); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			t.Fatalf("DeleteWithRevision after another writer = %v, want ErrKeyRevisionMismatch", err)
		}
		if e, err := raw.Get(ctx, "d2"); err != nil || string(e.Value()) != "theirs" {
			t.Fatalf("key = (%v, %v), want the other writer's value", e, err)
		}
	})
}

func TestKVOpsWriteCarriesTTL(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev1, err := ops.write(ctx, "k", []byte("v1"), 0, 2*time.Second)
	if err != nil || rev1 == 0 {
		t.Fatalf("write = (%d, %v)", rev1, err)
	}
	m := f.storedMsg(t, rev1)
	if got := m.Header.Get(jetstream.MsgTTLHeader); got != "2s" {
		t.Fatalf("stored %s header = %q, want \"2s\"", jetstream.MsgTTLHeader, got)
	}
	if m.Subject != "$KV."+f.kv.Bucket()+".k" || string(m.Data) != "v1" {
		t.Fatalf("stored %s %q", m.Subject, m.Data)
	}

	// The write is revision-checked.
	for _, wrong := range []uint64{0, rev1 + 1} {
		_, err := ops.write(ctx, "k", []byte("x"), wrong, 2*time.Second)
		if !isRevisionMismatch(err) {
			t.Fatalf("write expecting %d (latest %d) = %v, want a revision mismatch", wrong, rev1, err)
		}
	}

	rev2, err := ops.write(ctx, "k", []byte("v2"), rev1, 0)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("write = (%d, %v)", rev2, err)
	}
	if got := f.storedMsg(t, rev2).Header.Get(jetstream.MsgTTLHeader); got != "" {
		t.Fatalf("write without ttl stored %s = %q", jetstream.MsgTTLHeader, got)
	}
	s, err := ops.latest(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if s.vacant || !s.revKnown || s.rev != rev2 || string(s.value) != "v2" {
		t.Fatalf("latest = %+v, want live rev %d v2", s, rev2)
	}
}

// watchExpiry waits on w for the first entry after revision writeRev,
// which must be an expiry marker, and returns it with its arrival time.
func watchExpiry(t *testing.T, w jetstream.KeyWatcher, writeRev uint64, ttl time.Duration) (jetstream.KeyValueEntry, time.Time) {
	t.Helper()
	for {
		e, at := nextEntry(t, w, ttl+5*time.Second)
		if e.Revision() <= writeRev {
			continue
		}
		if e.Operation() != jetstream.KeyValuePurge {
			t.Fatalf("entry after the write: %v rev %d, want an expiry marker", e.Operation(), e.Revision())
		}
		return e, at
	}
}

func TestKVOpsWriteExpiresAfterTTL(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops
	const ttl = time.Second

	w, err := f.kv.Watch(ctx, "k", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	before := time.Now()
	rev, err := ops.write(ctx, "k", []byte("v"), 0, ttl)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	marker, at := watchExpiry(t, w, rev, ttl)
	if d := at.Sub(after); d < ttl-200*time.Millisecond {
		t.Fatalf("expired %v after the write, before its TTL %v", d, ttl)
	}
	if d := at.Sub(before); d > ttl+2*time.Second {
		t.Fatalf("expired %v after the write, long after its TTL %v", d, ttl)
	}
	if reason := f.storedMsg(t, marker.Revision()).Header.Get(jetstream.MarkerReasonHeader); reason == "" {
		t.Fatalf("marker rev %d has no %s header", marker.Revision(), jetstream.MarkerReasonHeader)
	}

	s, err := ops.latest(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if !s.vacant || !s.revKnown || s.rev != marker.Revision() {
		t.Fatalf("latest after expiry = %+v, want vacant at the marker's revision %d", s, marker.Revision())
	}
	if _, err := ops.Get(ctx, "k"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get after expiry = %v, want ErrKeyNotFound", err)
	}
	// Acquiring over the marker needs its revision.
	if _, err := ops.write(ctx, "k", []byte("next"), 0, ttl); !isRevisionMismatch(err) {
		t.Fatalf("write expecting 0 over a marker = %v, want a revision mismatch", err)
	}
	if rev2, err := ops.write(ctx, "k", []byte("next"), marker.Revision(), ttl); err != nil || rev2 <= marker.Revision() {
		t.Fatalf("write over the marker = (%d, %v)", rev2, err)
	}
}

func TestKVOpsRenewRestartsTTL(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops
	const ttl = 3 * time.Second

	w, err := f.kv.Watch(ctx, "k", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	first := time.Now()
	rev1, err := ops.write(ctx, "k", []byte("v"), 0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// Let part of the TTL pass: this is the scenario under test, not a
	// wait for an event.
	time.Sleep(1200 * time.Millisecond)
	// With a 3s TTL this leaves 1.6s of slack; past it the renewal could
	// not tell a restarted TTL from the first one, so say so loudly.
	if d := time.Since(first); d >= ttl-200*time.Millisecond {
		t.Fatalf("the renewal came %v after the first write, too late to test a %v TTL", d, ttl)
	}
	if s, err := ops.latest(ctx, "k"); err != nil || s.vacant || s.rev != rev1 {
		t.Fatalf("before renewal latest = (%+v, %v), want live rev %d", s, err, rev1)
	}
	renewed := time.Now()
	rev2, err := ops.write(ctx, "k", []byte("v"), rev1, ttl)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("renew = (%d, %v)", rev2, err)
	}
	marker, at := watchExpiry(t, w, rev2, ttl)
	if d := at.Sub(renewed); d < ttl-200*time.Millisecond {
		t.Fatalf("expired %v after the renewal (%v after the first write), want the TTL %v to restart at the renewal", d, at.Sub(first), ttl)
	}
	if d := at.Sub(renewed); d > ttl+2*time.Second {
		t.Fatalf("expired %v after the renewal, long after its TTL %v", d, ttl)
	}
	if s, err := ops.latest(ctx, "k"); err != nil || !s.vacant || s.rev != marker.Revision() {
		t.Fatalf("latest after expiry = (%+v, %v), want vacant at %d", s, err, marker.Revision())
	}
}

func TestKVOpsPurge(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops

	rev, err := ops.write(ctx, "k", []byte("v"), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, wrong := range []uint64{0, rev + 1} {
		if _, err := ops.purge(ctx, "k", wrong, 5*time.Second); !isRevisionMismatch(err) {
			t.Fatalf("purge expecting %d (latest %d) = %v, want a revision mismatch", wrong, rev, err)
		}
	}
	if s, err := ops.latest(ctx, "k"); err != nil || s.vacant || s.rev != rev {
		t.Fatalf("a refused purge changed the key: (%+v, %v)", s, err)
	}

	mrev, err := ops.purge(ctx, "k", rev, 5*time.Second)
	if err != nil || mrev <= rev {
		t.Fatalf("purge = (%d, %v), want the marker's revision after %d", mrev, err, rev)
	}
	m := f.storedMsg(t, mrev)
	if op, roll, ttl := m.Header.Get(kvOperationHeader), m.Header.Get(jetstream.MsgRollup), m.Header.Get(jetstream.MsgTTLHeader); op != "PURGE" || roll != "sub" || ttl != "5s" || m.Subject != "$KV."+f.kv.Bucket()+".k" {
		t.Fatalf("stored rev %d: subject %s KV-Operation %q Nats-Rollup %q Nats-TTL %q, want a PURGE rollup of k with a 5s TTL", mrev, m.Subject, op, roll, ttl)
	}
	s, err := ops.latest(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if !s.vacant || s.deleted || !s.revKnown || s.rev != mrev {
		t.Fatalf("latest after purge = %+v, want vacant (not deleted) at %d", s, mrev)
	}
	if _, err := ops.Get(ctx, "k"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("Get after purge = %v, want ErrKeyNotFound", err)
	}
	if rev3, err := ops.write(ctx, "k", []byte("w"), mrev, 5*time.Second); err != nil || rev3 <= mrev {
		t.Fatalf("write over the purge marker = (%d, %v)", rev3, err)
	}
}

// TestKVOpsLatestClassifiesMarkers: a vacancy is told apart by whether a
// write on it is safe from its expiry (see acquireStep).
func TestKVOpsLatestClassifiesMarkers(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx, ops := f.ctx, f.ops
	put := func(key string) uint64 {
		rev, err := ops.write(ctx, key, []byte("v"), 0, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	del := put("del")
	if err := f.kv.Delete(ctx, "del", jetstream.LastRevision(del)); err != nil {
		t.Fatal(err)
	}
	if _, err := ops.purge(ctx, "purged", put("purged"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	put("live")
	cases := []struct {
		key             string
		vacant, deleted bool
	}{
		{"never", true, false},
		{"live", false, false},
		{"del", true, true},
		{"purged", true, false},
	}
	for _, tc := range cases {
		s, err := ops.latest(ctx, tc.key)
		if err != nil || s.vacant != tc.vacant || s.deleted != tc.deleted || !s.revKnown {
			t.Errorf("latest(%s) = (%+v, %v), want vacant %v deleted %v", tc.key, s, err, tc.vacant, tc.deleted)
		}
	}
}

func TestKVOpsLatestNeverWritten(t *testing.T) {
	f := newKVOpsFixture(t)
	s, err := f.ops.latest(f.ctx, "never.written")
	if err != nil {
		t.Fatal(err)
	}
	if !s.vacant || s.rev != 0 || !s.revKnown || s.value != nil {
		t.Fatalf("latest(never written) = %+v, want vacant, rev 0, revKnown", s)
	}
	// Revision 0 is right for a first write.
	if rev, err := f.ops.write(f.ctx, "never.written", []byte("v"), s.rev, time.Second); err != nil || rev == 0 {
		t.Fatalf("write at the revision latest reported = (%d, %v)", rev, err)
	}
}

// TestKVOpsUnbound: on a KeyValue opened without BindJetStream the
// single-attempt operations fall back to the plain KeyValue API.
func TestKVOpsUnbound(t *testing.T) {
	f := newKVOpsFixture(t)
	ctx := f.ctx
	_, js := f.srv.JetStream()
	kv, err := js.KeyValue(ctx, f.kv.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	ops := NewKVOps(kv, nil)
	if ops.js != nil {
		t.Fatal("KVOps on an unbound KeyValue has a JetStream")
	}

	s, err := ops.latest(ctx, "k")
	if err != nil || !s.vacant || s.rev != 0 {
		t.Fatalf("latest(never written) = (%+v, %v), want vacant rev 0", s, err)
	}

	rev1, err := ops.write(ctx, "k", []byte("v1"), 0, time.Second)
	if err != nil || rev1 == 0 {
		t.Fatalf("write(0) = (%d, %v)", rev1, err)
	}
	s, err = ops.latest(ctx, "k")
	if err != nil || s.vacant || !s.revKnown || s.rev != rev1 || string(s.value) != "v1" {
		t.Fatalf("latest = (%+v, %v), want live rev %d v1", s, err, rev1)
	}
	if _, err := ops.write(ctx, "k", []byte("x"), 0, time.Second); !isRevisionMismatch(err) {
		t.Fatalf("write(0) on a live key = %v, want a conflict", err)
	}

	rev2, err := ops.write(ctx, "k", []byte("v2"), rev1, time.Second)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("write(expected %d) = (%d, %v)", rev1, rev2, err)
	}
	if _, err := ops.write(ctx, "k", []byte("x"), rev1, time.Second); !isRevisionMismatch(err) {
		t.Fatalf("stale write = %v, want a revision mismatch", err)
	}
	if _, err := ops.purge(ctx, "k", rev1, 0); !isRevisionMismatch(err) {
		t.Fatalf("stale purge = %v, want a revision mismatch", err)
	}
	if _, err := ops.purge(ctx, "k", 0, 0); err == nil {
		t.Fatal("an unbound purge expecting revision 0 was sent; nats.go would send it unchecked")
	}
	if s, err := ops.latest(ctx, "k"); err != nil || s.vacant || s.rev != rev2 || string(s.value) != "v2" {
		t.Fatalf("failed writes changed the key: (%+v, %v)", s, err)
	}

	if _, err := ops.purge(ctx, "k", rev2, 0); err != nil {
		t.Fatalf("purge: %v", err)
	}
	// Get hides a marker; latest learns its revision and kind from a watch.
	s, err = ops.latest(ctx, "k")
	if err != nil || !s.vacant || s.deleted || !s.revKnown || s.rev <= rev2 {
		t.Fatalf("latest after purge = (%+v, %v), want a vacancy at a known revision after %d", s, err, rev2)
	}
	// The bound view of the same bucket sees the same marker.
	if bs, err := f.ops.latest(ctx, "k"); err != nil || !bs.vacant || bs.rev != s.rev {
		t.Fatalf("bound latest after unbound purge = (%+v, %v), want vacant at %d", bs, err, s.rev)
	}
	// Writing over the marker.
	rev3, err := ops.write(ctx, "k", []byte("v3"), s.rev, time.Second)
	if err != nil || rev3 <= s.rev {
		t.Fatalf("write over the purge marker = (%d, %v)", rev3, err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || e.Revision() != rev3 || !bytes.Equal(e.Value(), []byte("v3")) {
		t.Fatalf("Get = (%v, %v), want rev %d v3", e, err, rev3)
	}
}
