package natskvlease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/dlock"
	"github.com/natskvlease/natskvlease/internal/natstest"
	"github.com/natskvlease/natskvlease/leadelect"
)

// The permissions the README documents, for bucket "perm": holder (and
// waiter), observer, and a user with no access to the bucket; plus a
// user of another account.
const permissionsConf = `
jetstream: {store_dir: "STORE_DIR"}
accounts: {
  APP: {
    jetstream: enabled
    users: [
      {user: holder, password: holder, permissions: {
        publish: {allow: [
          "$JS.API.INFO",
          "$JS.API.STREAM.INFO.KV_perm",
          "$JS.API.STREAM.CREATE.KV_perm",
          "$JS.API.STREAM.MSG.GET.KV_perm",
          "$JS.API.DIRECT.GET.KV_perm",
          "$JS.API.DIRECT.GET.KV_perm.>",
          "$JS.API.CONSUMER.CREATE.KV_perm.>",
          "$JS.API.CONSUMER.DELETE.KV_perm.>",
          "$JS.FC.KV_perm.>",
          "$KV.perm.>"
        ]}
        subscribe: {allow: ["_INBOX.>"]}
      }}
      {user: observer, password: observer, permissions: {
        publish: {allow: [
          "$JS.API.INFO",
          "$JS.API.STREAM.INFO.KV_perm",
          "$JS.API.STREAM.MSG.GET.KV_perm",
          "$JS.API.DIRECT.GET.KV_perm.>",
          "$JS.API.CONSUMER.CREATE.KV_perm.>",
          "$JS.API.CONSUMER.DELETE.KV_perm.>",
          "$JS.FC.KV_perm.>"
        ]}
        subscribe: {allow: ["_INBOX.>"]}
      }}
      {user: stranger, password: stranger, permissions: {
        publish: {allow: ["$JS.API.INFO", "$JS.API.STREAM.INFO.KV_other"]}
        subscribe: {allow: ["_INBOX.>"]}
      }}
    ]
  }
  OTHER: {users: [{user: other, password: other}]}
}
`

func TestLeastPrivilege(t *testing.T) {
	srv := natstest.StartConfig(t, permissionsConf)
	ctx := natstest.Context(t)
	as := func(user string) jetstream.JetStream {
		nc := srv.Connect(nats.UserInfo(user, user))
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	holderJS, waiterJS, observerJS := as("holder"), as("holder"), as("observer")
	const bucket, ttl = "perm", time.Second

	// Holder and waiter: create the bucket, lock, wait, hand over.
	holder, err := dlock.New(ctx, holderJS, dlock.WithBucket(bucket), dlock.WithTTL(ttl))
	if err != nil {
		t.Fatalf("holder: dlock.New: %v", err)
	}
	defer holder.Close(ctx)
	waiter, err := dlock.New(ctx, waiterJS, dlock.WithBucket(bucket), dlock.WithTTL(2*ttl))
	if err != nil {
		t.Fatalf("waiter: dlock.New: %v", err)
	}
	defer waiter.Close(ctx)
	first, err := holder.TryLock(ctx, "job")
	if err != nil {
		t.Fatalf("holder: TryLock: %v", err)
	}
	got := make(chan *dlock.Lock, 1)
	go func() {
		l, err := waiter.Lock(ctx, "job")
		if err != nil {
			t.Errorf("waiter: Lock: %v", err)
		}
		got <- l
	}()
	if err := first.Unlock(ctx); err != nil {
		t.Fatalf("holder: Unlock: %v", err)
	}
	held := <-got
	if held == nil {
		t.FailNow()
	}
	e, err := leadelect.New(holderJS, leadelect.Config{Bucket: bucket, Key: "leader", ID: "h", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	stopLeading := lead(t, e)
	defer stopLeading()

	// Observer: reads and watches, but cannot write.
	h, err := dlock.ReadHolder(ctx, observerJS, bucket, "job")
	if err != nil || h.Token != held.Token() {
		t.Fatalf("observer: ReadHolder = %+v, %v; want token %d", h, err, held.Token())
	}
	obs, err := leadelect.NewObserver(observerJS, leadelect.ObserverConfig{Bucket: bucket, Key: "leader"})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := obs.Leader(ctx); err != nil || info.ID != "h" {
		t.Fatalf("observer: Leader = %+v, %v", info, err)
	}
	if first := <-obs.Observe(ctx); first.ID != "h" {
		t.Fatalf("observer: Observe first %+v", first)
	}
	oc, err := dlock.New(ctx, observerJS, dlock.WithBucket(bucket), dlock.WithTTL(ttl))
	if err != nil {
		t.Fatalf("observer: dlock.New on an existing bucket: %v", err)
	}
	defer oc.Close(ctx)
	t0 := time.Now()
	_, err = oc.TryLock(ctx, "free.key")
	if !errors.Is(err, natskvlease.ErrPermissionDenied) || !strings.Contains(err.Error(), "$KV.perm.free.key") {
		t.Fatalf("observer: TryLock = %v, want ErrPermissionDenied naming the subject", err)
	}
	t.Logf("observer's lock attempt (%v in): %v", time.Since(t0), err)
	if _, err := dlock.ReadHolder(ctx, holderJS, bucket, "free.key"); !errors.Is(err, dlock.ErrNotLocked) {
		t.Fatalf("the refused lock changed the key: %v", err)
	}

	// A user without access to the bucket, and one of another account.
	t0 = time.Now()
	if _, err := dlock.New(ctx, as("stranger"), dlock.WithBucket(bucket), dlock.WithTTL(ttl)); !errors.Is(err, natskvlease.ErrPermissionDenied) {
		t.Fatalf("stranger: dlock.New = %v, want ErrPermissionDenied", err)
	} else {
		t.Logf("stranger (%v): %v", time.Since(t0).Round(time.Millisecond), err)
	}
	if _, err := dlock.New(ctx, as("other"), dlock.WithBucket(bucket), dlock.WithTTL(ttl)); !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) && !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		t.Fatalf("other account: dlock.New = %v, want JetStream not enabled", err)
	} else {
		t.Logf("other account: %v", err)
	}

	// The holder's lock is untouched.
	if h, err := dlock.ReadHolder(ctx, holderJS, bucket, "job"); err != nil || h.Token != held.Token() || held.Context().Err() != nil {
		t.Fatalf("holder's lock after the refusals: %+v, %v (lock context %v)", h, err, held.Context().Err())
	}
	if err := held.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// lead runs e until it leads, and returns a function that ends Run
// and waits for it.
func lead(t *testing.T, e *leadelect.Election) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(natstest.Context(t))
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- e.Run(ctx, leadelect.Callbacks{OnStartedLeading: func(lctx context.Context) {
			close(started)
			<-lctx.Done()
		}})
	}()
	select {
	case <-started:
	case err := <-done:
		cancel()
		t.Fatalf("election: Run = %v", err)
	}
	return func() { cancel(); <-done }
}
