package faulttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/faultproxy"
	"github.com/natskvlease/natskvlease/internal/natstest"
)

// expiryEnv is what the expiry tests share: a cluster whose routes go
// through fault proxies, an R3 lease bucket, and connections straight to
// the bucket's stream leader, whose traffic no route freeze touches.
type expiryEnv struct {
	t       *testing.T
	c       *natstest.Cluster
	bucket  string
	stream  string
	leader  int
	maxAge  time.Duration
	proxies []*faultproxy.Proxy
	observe *nats.Conn // leader reads
	spy     *spy
	file    bool
}

// fileStorage reports whether NATSKVLEASE_EXPIRY_FILE asks for a file
// storage bucket instead of memory storage.
func fileStorage() bool { return os.Getenv("NATSKVLEASE_EXPIRY_FILE") != "" }

func newExpiryEnv(t *testing.T, name string) *expiryEnv {
	t.Helper()
	c := natstest.StartRouteProxiedCluster(t)
	ctx := setupCtx(t)
	e := &expiryEnv{t: t, c: c, bucket: newBucketName(name), maxAge: leaseTTL, proxies: c.RouteProxies(), file: fileStorage()}
	e.stream = "KV_" + e.bucket
	_, js := c.JetStream()
	createBucket(t, ctx, js, e.bucket, 3, e.file)
	e.leader = c.WaitStreamLeader(t, e.stream, 30*time.Second)
	for i := range natstest.ClusterSize {
		c.WaitForStreamCurrent(t, i, e.stream, 30*time.Second)
	}
	if routes, proxied := c.RouteConns(); routes == 0 || routes != proxied {
		t.Fatalf("%d route connections, %d through the proxies", routes, proxied)
	}
	e.observe = c.ConnectTo(e.leader)
	e.spy = newSpy(t, e.observe, "$KV."+e.bucket+".>")
	return e
}

// kv opens the bucket on a new connection to the stream leader's node.
func (e *expiryEnv) kv() jetstream.KeyValue {
	e.t.Helper()
	js, err := jetstream.New(e.c.ConnectTo(e.leader))
	if err != nil {
		e.t.Fatal(err)
	}
	return openKV(e.t, setupCtx(e.t), js, e.bucket)
}

// freeze pauses or resumes every route. Safe from any goroutine.
func (e *expiryEnv) freeze(on bool) {
	for _, p := range e.proxies {
		p.Freeze(on)
	}
}

// held is the number of route chunks held by freezes so far.
func (e *expiryEnv) held() (n int64) {
	for _, p := range e.proxies {
		n += p.HeldChunks()
	}
	return n
}

func newLease(kv jetstream.KeyValue, key, value string) *natskvlease.Lease {
	return natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: key, TTL: leaseTTL, Value: []byte(value)})
}

// storedMsg is a message as the stream leader holds it.
type storedMsg struct {
	Seq  uint64
	Time time.Time // the leader's timestamp: when it proposed the message
	Hdr  nats.Header
	Data []byte
}

// kind names what a stored message is to a lease: "put", "DEL" or
// "PURGE" (KV-Operation), or a server marker's reason ("MaxAge"...).
func (m storedMsg) kind() string {
	if op := m.Hdr.Get("KV-Operation"); op != "" {
		return op
	}
	if r := m.Hdr.Get(jetstream.MarkerReasonHeader); r != "" {
		return r
	}
	return "put"
}

// expiry is when the server expires m: its timestamp plus its own TTL
// (Nats-TTL, a Go duration or whole seconds) or else the bucket's MaxAge.
func (m storedMsg) expiry(maxAge time.Duration) time.Time {
	ttl := maxAge
	if v := m.Hdr.Get(jetstream.MsgTTLHeader); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			ttl = d
		} else if s, err := strconv.ParseInt(v, 10, 64); err == nil {
			ttl = time.Duration(s) * time.Second
		}
	}
	return m.Time.Add(ttl)
}

var errNoMsg = errors.New("no message")

// leaderGet reads from the stream leader, by body ({"last_by_subj":...}
// or {"seq":...}); errNoMsg if there is none.
func (e *expiryEnv) leaderGet(body string) (storedMsg, error) {
	msg, err := e.observe.Request("$JS.API.STREAM.MSG.GET."+e.stream, []byte(body), 2*time.Second)
	if err != nil {
		return storedMsg{}, err
	}
	var resp struct {
		Message *struct {
			Seq  uint64    `json:"seq"`
			Time time.Time `json:"time"`
			Hdrs []byte    `json:"hdrs"`
			Data []byte    `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return storedMsg{}, err
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return storedMsg{}, errNoMsg
	case resp.Error != nil:
		return storedMsg{}, resp.Error
	case resp.Message == nil:
		return storedMsg{}, errors.New("empty message-get response")
	}
	m := storedMsg{Seq: resp.Message.Seq, Time: resp.Message.Time, Data: resp.Message.Data, Hdr: nats.Header{}}
	if len(resp.Message.Hdrs) > 0 {
		if m.Hdr, err = nats.DecodeHeadersMsg(resp.Message.Hdrs); err != nil {
			return storedMsg{}, err
		}
	}
	return m, nil
}

// latest reads key's latest message from the stream leader.
func (e *expiryEnv) latest(key string) (storedMsg, error) {
	return e.leaderGet(fmt.Sprintf(`{"last_by_subj":"$KV.%s.%s"}`, e.bucket, key))
}

// spy records when each write on the bucket's subjects reaches the
// leader's node: a core NATS subscription there sees a client's publish
// as the server receives it, before JetStream has stored it.
type spy struct {
	mu   sync.Mutex
	seen []spied
}

type spied struct {
	subject  string
	data     string
	expected string // Nats-Expected-Last-Subject-Sequence
	at       time.Time
}

func newSpy(t *testing.T, nc *nats.Conn, subject string) *spy {
	t.Helper()
	s := &spy{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		at := time.Now()
		s.mu.Lock()
		s.seen = append(s.seen, spied{subject: m.Subject, data: string(m.Data), expected: m.Header.Get(jetstream.ExpectedLastSubjSeqHeader), at: at})
		s.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return s
}

// firstWrite returns when the first write on subject with value data
// arrived after after, if one did.
func (s *spy) firstWrite(subject, data string, after time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.seen {
		if w.subject == subject && w.data == data && !w.at.Before(after) {
			return w.at, true
		}
	}
	return time.Time{}, false
}

// sleepUntil sleeps until at. Used only to aim a fault or a write at an
// instant, never to wait for something to happen.
func sleepUntil(ctx context.Context, at time.Time) {
	d := time.Until(at)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
	}
}

// envInt reads a positive integer from the environment, or def.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q is not a positive integer", name, v)
	}
	return n
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
