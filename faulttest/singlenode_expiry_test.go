package faulttest

// Can a single-replica bucket lose an acknowledged, revision-checked write
// to the expiry of the key's previous message? (issue 9 point 3)
//
// The server path (nats-server v2.15.2, sources in the module cache):
//
//   - memstore.go (*memStore).expireMsgs and filestore.go (*fileStore).expireMsgs
//     run on the store's age-check timer. For every expired message X (the
//     MaxAge loop, then the per-message TTL wheel) they call
//     shouldProcessSdm[Locked], which decides under the store lock whether X
//     is the last message of its subject, then drop the store lock and call
//     handleRemovalOrSdm.
//   - handleRemovalOrSdm: if X was the last and is not a "subject delete
//     marker" (sdm.go isSubjectDeleteMarker: a Nats-Marker-Reason header or
//     KV-Operation: PURGE), it builds a marker (Nats-Marker-Reason: MaxAge,
//     Nats-TTL, Nats-Rollup: sub) and hands it to pmsgcb; otherwise it calls
//     rmcb(X), which removes X alone.
//   - stream.go (*stream).setupStore registers both callbacks. On a
//     non-clustered stream pmsgcb calls processJetStreamMsg directly on the
//     expiry goroutine and rmcb calls mset.removeMsg.
//   - A client publish reaches processJetStreamMsg differently:
//     processInboundJetStreamMsg pushes it onto the stream's mset.msgs queue
//     (queueInbound), and the stream's internalLoop goroutine pops and
//     processes it. processJetStreamMsg takes mset.isolateMu and mset.mu for
//     each message; the expected-last-subject-sequence check
//     (store.LoadLastMsg) and the store happen under them.
//
// So the "last" decision (under the store lock) and the marker's processing
// (under the stream locks) are separated by an unlocked gap in which the
// internalLoop goroutine may process a client's write W that expects X: X is
// still stored, so W passes its check and is acknowledged; the marker then
// arrives with no expected sequence, is stored, and its subject rollup
// purges W. The gap is short, but it grows when the expiry goroutine has to
// wait for the stream locks while internalLoop is busy with other writes,
// which is what many keys expiring at once under a stream of writes does.
// When X is a KV PURGE marker or a server MaxAge marker there is no rollup:
// X alone is removed, and a W stored before the removal survives.
//
// The test writes X on many keys of one bucket per storage type, with the
// four kinds of X interleaved so that they expire in the same passes. It
// watches the stream's first sequence for the first expiry pass, then aims
// one revision-checked write W per key, from several connections, at the
// start of the later pass that removes the remaining Xs together (learnt
// from the previous round), spread over a few ms. After the passes it reads
// every key's latest message and counts the keys whose W was acknowledged
// but is gone, replaced by a MaxAge marker (wiped). It asserts that no W on
// a PURGE marker or on a server MaxAge marker is ever wiped, and that the
// fault was exercised: every X expired during the run, and Ws were
// processed within a few ms of their key's expiry, on both sides of it. The
// wiped counts of puts and KV DEL markers are logged (and printed with -v),
// not asserted: the race is real on a single server too (a run has shown
// memory/put wiped=1/96), but its window is narrow. NATSKVLEASE_SOAK
// repeats rounds for that long.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

const (
	// expiryTTL is the buckets' MaxAge and LimitMarkerTTL and every
	// message's Nats-TTL. A W lives this long after it is stored, so the
	// outcome is read well within it.
	expiryTTL = 2 * time.Second
	// expiryAimBefore and expiryAimAfter bound the random offset of a W
	// from the predicted start of the pass that removes its X.
	expiryAimBefore = 3 * time.Millisecond
	expiryAimAfter  = 12 * time.Millisecond
	// expiryNear is how close to its key's expiry a W must have been
	// processed to count as aimed well: X was seen gone at most this
	// long before or after W was sent.
	expiryNear = 5 * time.Millisecond
	// expiryMinRounds is how many rounds each storage type runs at least;
	// the first round learns when the batch pass begins.
	expiryMinRounds = 3
	// expirySenders is the number of connections sending Ws.
	expirySenders = 8
)

// expiryKeys is how many keys of each kind a round uses.
func expiryKeys() int {
	if v, err := strconv.Atoi(os.Getenv("NATSKVLEASE_EXPIRY_KEYS")); err == nil && v > 0 {
		return v
	}
	return 250
}

// xKind is the kind of message X a key holds when W is aimed at its expiry.
type xKind int

const (
	xPut          xKind = iota // a put with Nats-TTL
	xDel                       // a KV DEL marker (no TTL: MaxAge expires it)
	xPurge                     // a KV PURGE marker with Nats-Rollup: sub and Nats-TTL
	xServerMarker              // the server's MaxAge marker left by an expired put
	numXKinds
)

func (k xKind) String() string {
	return [...]string{"put", "del", "purge", "server-marker"}[k]
}

// safe reports whether the server removes X alone on expiry (no rollup).
func (k xKind) safe() bool { return k == xPurge || k == xServerMarker }

// outcome is what happened to a key's W.
type outcome int

const (
	kept     outcome = iota // acknowledged and still the key's latest message
	wiped                   // acknowledged, then replaced by a MaxAge marker
	rejected                // refused: X was already gone or replaced
	other                   // anything else (logged)
	numOutcomes
)

// expiryKey is one key's X, W and final state.
type expiryKey struct {
	kind   xKind
	name   string
	xSeq   uint64
	xTime  time.Time
	target time.Time // when W is to be sent
	fut    jetstream.PubAckFuture
	sent   time.Time // when W was sent
	gone   time.Time // when X was first seen removed
	wSeq   uint64    // W's acknowledged sequence, 0 if not acknowledged
	wErr   error
	final  rawMsg
	res    outcome
}

// rawMsg is a message as $JS.API.STREAM.MSG.GET returns it.
type rawMsg struct {
	Seq   uint64    `json:"seq"`
	Hdrs  []byte    `json:"hdrs"`
	Time  time.Time `json:"time"`
	found bool
}

func (m rawMsg) header(name string) string {
	for l := range strings.SplitSeq(string(m.Hdrs), "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (m rawMsg) isMaxAgeMarker() bool {
	return m.found && m.header("Nats-Marker-Reason") == "MaxAge"
}

// expiryTally sums a storage type's outcomes over the rounds.
type expiryTally struct {
	counts  [numXKinds][numOutcomes]int
	near    [numXKinds][2]int // Ws processed within expiryNear before / after the key's expiry
	expired [numXKinds]int    // keys whose X was gone when the outcome was read
	total   [numXKinds]int
	// batchDelay is how long after the first pass the pass that removed
	// the remaining Xs began, in the last round.
	batchDelay time.Duration
}

func TestSingleNodeExpiryRace(t *testing.T) {
	if os.Getenv("NATSKVLEASE_SOAK") == "" {
		// Its writes are aimed by the wall clock at an expiry pass whose
		// timing a loaded machine shifts by more than the window it aims
		// at; it is an experiment to run on a quiet machine, for as long
		// as asked. The lease-level rules it supports are tested on one
		// server in the root package (lease_expiry_test.go), for memory
		// and file storage, in every run.
		t.Skip("a wall-clock-aimed soak experiment: run with NATSKVLEASE_SOAK=30s (or longer) on a quiet machine")
	}
	soak := runFor(t, 0)
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	for _, st := range []struct {
		name    string
		storage jetstream.StorageType
	}{
		{"memory", jetstream.MemoryStorage},
		{"file", jetstream.FileStorage},
	} {
		t.Run(st.name, func(t *testing.T) {
			tally := expiryTally{batchDelay: 250 * time.Millisecond}
			start := time.Now()
			for round := 0; round < expiryMinRounds || time.Since(start) < soak; round++ {
				expiryRound(t, ctx, srv, st.storage, &tally)
				if t.Failed() {
					return
				}
			}
			reportExpiry(t, st.name, &tally)
		})
	}
}

// expiryRound runs one bucket's worth of keys through one expiry.
func expiryRound(t *testing.T, ctx context.Context, srv *natstest.Server, storage jetstream.StorageType, tally *expiryTally) {
	t.Helper()
	nc, js := srv.JetStream()
	bucket := newBucketName("expiry")
	_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket, History: 1, TTL: expiryTTL, LimitMarkerTTL: expiryTTL, Storage: storage,
	})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	defer func() { _ = js.DeleteKeyValue(context.Background(), bucket) }()
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}

	n := expiryKeys()
	keys := make([]*expiryKey, 0, n*int(numXKinds))
	for i := range n {
		for k := range numXKinds {
			keys = append(keys, &expiryKey{kind: k, name: fmt.Sprintf("k%05d_%s", i, k)})
		}
	}
	subj := func(k *expiryKey) string { return "$KV." + bucket + "." + k.name }
	byKind := func(pred func(xKind) bool) []*expiryKey {
		var out []*expiryKey
		for _, k := range keys {
			if pred(k.kind) {
				out = append(out, k)
			}
		}
		return out
	}

	// Server markers first: put with Nats-TTL, and wait until every put
	// has expired into a MaxAge marker.
	markerKeys := byKind(func(k xKind) bool { return k == xServerMarker })
	lastPut := publishAll(t, ctx, js, markerKeys, func(k *expiryKey) *nats.Msg {
		m := nats.NewMsg(subj(k))
		m.Data = []byte("x")
		m.Header.Set("Nats-TTL", expiryTTL.String())
		return m
	})
	waitFirstSeqAbove(t, ctx, stream, lastPut, 3*expiryTTL)

	// Then the other kinds, in one burst so that they expire together
	// with the markers.
	publishAll(t, ctx, js, byKind(func(k xKind) bool { return k != xServerMarker }), func(k *expiryKey) *nats.Msg {
		m := nats.NewMsg(subj(k))
		switch k.kind {
		case xPut:
			m.Data = []byte("x")
			m.Header.Set("Nats-TTL", expiryTTL.String())
		case xDel:
			m.Header.Set("KV-Operation", "DEL")
		case xPurge:
			m.Header.Set("KV-Operation", "PURGE")
			m.Header.Set("Nats-Rollup", "sub")
			m.Header.Set("Nats-TTL", expiryTTL.String())
		}
		return m
	})

	// Read every X's sequence and stored time, then follow the expiry
	// passes and send each key's W as the pass comes near its X.
	readLatest(t, nc, bucket, keys)
	for _, k := range keys {
		if !k.final.found || (k.kind == xServerMarker) != k.final.isMaxAgeMarker() {
			t.Fatalf("key %s: unexpected X %+v (%q)", k.name, k.final, k.final.Hdrs)
		}
		k.xSeq, k.xTime = k.final.Seq, k.final.Time
	}
	followExpiry(t, ctx, srv, stream, keys, subj, tally)
	readLatest(t, nc, bucket, keys)

	for _, k := range keys {
		k.res = classify(k)
		tally.total[k.kind]++
		if !k.final.found || k.final.Seq != k.xSeq {
			tally.expired[k.kind]++
		}
		tally.counts[k.kind][k.res]++
		if d := k.sent.Sub(k.gone); d > -expiryNear && d <= expiryNear && !k.gone.IsZero() {
			if k.res == rejected {
				tally.near[k.kind][1]++
			} else {
				tally.near[k.kind][0]++
			}
		}
		if k.res == other {
			t.Logf("key %s: W seq=%d err=%v, latest %+v %q", k.name, k.wSeq, k.wErr, k.final, k.final.Hdrs)
		}
	}
}

// followExpiry polls the stream's first sequence, which the expiry passes
// advance through the Xs (the stream's oldest messages) in sequence order,
// and records when each X was seen gone. The first pass removes the Xs
// already due; the rest are removed together by a later pass (the store
// re-arms its timer no sooner than 250 ms, memstore.go/filestore.go
// resetAgeChk). Once the first pass is seen, every remaining key's W is
// aimed at the later pass's predicted start (tally.batchDelay, learnt from
// the previous round) with a random offset, from expirySenders
// connections; the Ws of keys already gone are sent at once. It waits for
// every W's outcome and returns once every X is gone.
func followExpiry(t *testing.T, ctx context.Context, srv *natstest.Server, stream jetstream.Stream, keys []*expiryKey, subj func(*expiryKey) string, tally *expiryTally) {
	t.Helper()
	bySeq := slices.Clone(keys)
	slices.SortFunc(bySeq, func(a, b *expiryKey) int { return cmp.Compare(a.xSeq, b.xSeq) })

	senders := make([]jetstream.JetStream, expirySenders)
	for i := range senders {
		_, senders[i] = srv.JetStream()
	}
	send := func(js jetstream.JetStream, k *expiryKey) {
		m := nats.NewMsg(subj(k))
		m.Data = []byte("w")
		k.sent = time.Now()
		f, err := js.PublishMsgAsync(m, jetstream.WithExpectLastSequencePerSubject(k.xSeq), jetstream.WithMsgTTL(expiryTTL))
		if err != nil {
			k.wErr = err
			return
		}
		k.fut = f
	}

	// Start polling shortly before the first X is due.
	first := slices.MinFunc(keys, func(a, b *expiryKey) int { return a.xTime.Compare(b.xTime) })
	time.Sleep(time.Until(first.xTime.Add(expiryTTL - 20*time.Millisecond))) // aims the polling; not synchronisation
	deadline := time.Now().Add(3 * expiryTTL)
	var sending sync.WaitGroup
	gone, firstGone := 0, 0
	var firstPass time.Time
	for gone < len(bySeq) {
		if time.Now().After(deadline) {
			t.Fatalf("Xs not expired within %v: %d of %d gone", 3*expiryTTL, gone, len(bySeq))
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		fs, now := info.State.FirstSeq, time.Now()
		for gone < len(bySeq) && bySeq[gone].xSeq < fs {
			bySeq[gone].gone = now
			gone++
		}
		if gone > 0 && firstPass.IsZero() {
			firstPass, firstGone = now, gone
			for i := range bySeq[:gone] {
				send(senders[i%expirySenders], bySeq[i])
			}
			rest := slices.Clone(bySeq[gone:])
			for _, k := range rest {
				off := time.Duration(rand.Int64N(int64(expiryAimBefore+expiryAimAfter))) - expiryAimBefore
				k.target = firstPass.Add(tally.batchDelay + off)
			}
			slices.SortFunc(rest, func(a, b *expiryKey) int { return a.target.Compare(b.target) })
			for s, js := range senders {
				sending.Go(func() {
					for i := s; i < len(rest); i += expirySenders {
						time.Sleep(time.Until(rest[i].target)) // aims the write; not synchronisation
						send(js, rest[i])
					}
				})
			}
		}
	}
	sending.Wait()
	if firstGone < len(bySeq) {
		tally.batchDelay = bySeq[firstGone].gone.Sub(firstPass)
	}
	for _, k := range keys {
		if k.fut == nil {
			continue
		}
		select {
		case ack := <-k.fut.Ok():
			k.wSeq = ack.Sequence
		case err := <-k.fut.Err():
			k.wErr = err
		case <-ctx.Done():
			t.Fatalf("W %s: %v", k.name, ctx.Err())
		}
	}

}

func classify(k *expiryKey) outcome {
	switch {
	case k.wSeq != 0 && k.final.found && k.final.Seq == k.wSeq:
		return kept
	case k.wSeq != 0 && k.final.isMaxAgeMarker() && k.final.Seq > k.wSeq &&
		k.final.Time.Before(k.sent.Add(expiryTTL/2)):
		return wiped
	case k.wSeq == 0 && isWrongLast(k.wErr):
		return rejected
	}
	return other
}

func isWrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// publishAll publishes one message per key as fast as the connection
// takes them and returns the highest acknowledged sequence.
func publishAll(t *testing.T, ctx context.Context, js jetstream.JetStream, keys []*expiryKey, msg func(*expiryKey) *nats.Msg) uint64 {
	t.Helper()
	futs := make([]jetstream.PubAckFuture, 0, len(keys))
	for _, k := range keys {
		f, err := js.PublishMsgAsync(msg(k))
		if err != nil {
			t.Fatalf("publish X %s: %v", k.name, err)
		}
		futs = append(futs, f)
	}
	var last uint64
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			last = max(last, ack.Sequence)
		case err := <-f.Err():
			t.Fatalf("publish X %s: %v", keys[i].name, err)
		case <-ctx.Done():
			t.Fatalf("publish X %s: %v", keys[i].name, ctx.Err())
		}
	}
	return last
}

// waitFirstSeqAbove polls the stream until its first sequence is above seq,
// that is until every message up to seq has been removed.
func waitFirstSeqAbove(t *testing.T, ctx context.Context, stream jetstream.Stream, seq uint64, timeout time.Duration) {
	t.Helper()
	natstest.Eventually(t, timeout, fmt.Sprintf("messages up to %d to expire", seq), func() bool {
		info, err := stream.Info(ctx)
		return err == nil && info.State.FirstSeq > seq
	})
}

// readLatest stores every key's latest message in its final field.
func readLatest(t *testing.T, nc *nats.Conn, bucket string, keys []*expiryKey) {
	t.Helper()
	const readers = 8
	errs := make(chan error, readers)
	var wg sync.WaitGroup
	for r := range readers {
		wg.Go(func() {
			for i := r; i < len(keys); i += readers {
				m, err := lastBySubject(nc, bucket, keys[i].name)
				if err != nil {
					errs <- err
					return
				}
				keys[i].final = m
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("read latest: %v", err)
	}
}

func lastBySubject(nc *nats.Conn, bucket, key string) (rawMsg, error) {
	req := fmt.Sprintf(`{"last_by_subj":"$KV.%s.%s"}`, bucket, key)
	msg, err := nc.Request("$JS.API.STREAM.MSG.GET.KV_"+bucket, []byte(req), 5*time.Second)
	if err != nil {
		return rawMsg{}, fmt.Errorf("get %s: %w", key, err)
	}
	var resp struct {
		Message *rawMsg `json:"message"`
		Error   *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return rawMsg{}, fmt.Errorf("get %s: %w", key, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return rawMsg{}, nil
	case resp.Error != nil:
		return rawMsg{}, fmt.Errorf("get %s: %s", key, resp.Error.Description)
	case resp.Message == nil:
		return rawMsg{}, fmt.Errorf("get %s: empty response", key)
	}
	m := *resp.Message
	m.found = true
	return m, nil
}

// reportExpiry logs a storage type's figures and checks them.
func reportExpiry(t *testing.T, storage string, tally *expiryTally) {
	t.Helper()
	var before, after, total int
	for k := range numXKinds {
		c := tally.counts[k]
		line := fmt.Sprintf("EXPIRY %s/%s wiped=%d/%d kept=%d rejected=%d other=%d near_before=%d near_after=%d expired=%d",
			storage, k, c[wiped], c[kept]+c[wiped], c[kept], c[rejected], c[other],
			tally.near[k][0], tally.near[k][1], tally.expired[k])
		t.Log(line)
		figures.Lock()
		figures.lines = append(figures.lines, line)
		figures.Unlock()

		if k.safe() && c[wiped] != 0 {
			t.Errorf("%s/%s: %d acknowledged writes wiped by expiry", storage, k, c[wiped])
		}
		if tally.expired[k] != tally.total[k] {
			t.Errorf("%s/%s: only %d of %d X expired during the run", storage, k, tally.expired[k], tally.total[k])
		}
		// Aimed well: a fair share of this kind's Ws were processed
		// within expiryNear of their key's expiry.
		if near := tally.near[k][0] + tally.near[k][1]; near < tally.total[k]/10 {
			t.Errorf("%s/%s: only %d of %d writes near the expiry", storage, k, near, tally.total[k])
		}
		before += tally.near[k][0]
		after += tally.near[k][1]
		total += tally.total[k]
	}
	// ...and on both sides of it: some were stored while X was still
	// there, some arrived just after it was gone.
	if before < total/200 || after < total/200 {
		t.Errorf("%s: too few writes on each side of the expiry (before %d, after %d, want %d each)", storage, before, after, total/200)
	}
}
