package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natskvlease/natskvlease"
	"github.com/natskvlease/natskvlease/internal/checker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(withFigures{m}) }

// withFigures prints every scenario's figure line together once the tests
// have run (with -v), ready to paste into the README's table.
type withFigures struct{ m *testing.M }

func (w withFigures) Run() int {
	code := w.m.Run()
	if testing.Verbose() {
		figures.Lock()
		for _, l := range figures.lines {
			fmt.Println(l)
		}
		figures.Unlock()
	}
	return code
}

const (
	leaseTTL = 2 * time.Second
	leaseKey = "lock"
)

// runFor is how long each scenario injects faults: NATSKVLEASE_SOAK, or
// a few seconds.
func runFor(t *testing.T, def time.Duration) time.Duration {
	v := os.Getenv("NATSKVLEASE_SOAK")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("NATSKVLEASE_SOAK=%q is not a positive Go duration", v)
	}
	return d
}

var bucketSeq atomic.Int64

func newBucketName(name string) string {
	return fmt.Sprintf("ft_%s_%d", name, bucketSeq.Add(1))
}

// createBucket creates the lease bucket through js.
func createBucket(t *testing.T, ctx context.Context, js jetstream.JetStream, bucket string, replicas int, file bool) {
	t.Helper()
	_, err := natskvlease.NewKVHelper(js, nil).GetOrCreateBucket(ctx, natskvlease.BucketConfig{
		Bucket: bucket, TTL: leaseTTL, Replicas: replicas, FileStorage: file,
	})
	if err != nil {
		t.Fatalf("GetOrCreateBucket: %v", err)
	}
}

// openKV opens bucket on js, retrying while the cluster settles, and binds
// it to js.
func openKV(t *testing.T, ctx context.Context, js jetstream.JetStream, bucket string) jetstream.KeyValue {
	t.Helper()
	kv, err := natskvlease.Retry(ctx, func() (jetstream.KeyValue, error) { return js.KeyValue(ctx, bucket) })
	if err != nil {
		t.Fatalf("open bucket %s: %v", bucket, err)
	}
	return natskvlease.BindJetStream(kv, js)
}

// stats are a scenario's figures.
type stats struct {
	faults   atomic.Int64
	spurious atomic.Int64 // Done closed while the server still showed the holder's value
	losses   atomic.Int64 // holdings that ended without Release
	adopted  atomic.Int64 // ambiguous renewals resolved as applied
	released atomic.Int64 // holdings ended by a confirmed Release
}

// scenario runs contenders on one key and checks their history.
type scenario struct {
	t       *testing.T
	name    string
	ctx     context.Context // ends when the contenders must stop
	stop    context.CancelFunc
	chk     *checker.Checker
	st      stats
	bucket  string
	observe *nats.Conn // an unfaulted connection for leader reads
	wg      sync.WaitGroup

	mu sync.Mutex
	cs []*contender

	// faultDue is set by the test goroutine when the next holder should
	// suffer the scenario's fault; the hook claims it. completed counts
	// the faults whose outcome the hook has checked.
	faultDue  atomic.Bool
	completed atomic.Int64
	inFault   atomic.Bool

	// anyHolder accepts a run in which one contender won every holding
	// (the expiry nemesis decides who tries, not who wins).
	anyHolder bool

	// hook, if set, is called by a contender right after it began a
	// holding; it may inject a fault and wait for its outcome. It
	// returns whether the contender should go on holding normally.
	hook func(c *contender) bool
}

func newScenario(t *testing.T, name, bucket string, observe *nats.Conn) *scenario {
	ctx, cancel := context.WithCancel(context.Background())
	s := &scenario{t: t, name: name, ctx: ctx, stop: cancel, chk: checker.New(), bucket: bucket, observe: observe}
	t.Cleanup(cancel)
	return s
}

// contender is one holder on its own connection.
type contender struct {
	s     *scenario
	name  string
	value []byte
	lease *natskvlease.Lease
	iv    *checker.Interval // the current holding
	done  <-chan struct{}   // the current holding's Done
	extra any               // per-scenario data (a proxy)
}

func (s *scenario) addContender(kv jetstream.KeyValue, extra any) *contender {
	name := fmt.Sprintf("c%d", len(s.contenders()))
	c := &contender{s: s, name: name, value: []byte(s.name + "-" + name), extra: extra}
	c.lease = natskvlease.NewLease(kv, natskvlease.LeaseConfig{Key: leaseKey, TTL: leaseTTL, Value: c.value})
	s.mu.Lock()
	s.cs = append(s.cs, c)
	s.mu.Unlock()
	return c
}

func (s *scenario) contenders() []*contender {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*contender(nil), s.cs...)
}

// claimFault reports whether a fault is due, claiming it. The caller
// calls faultDone once the outcome is checked.
func (s *scenario) claimFault() bool {
	if !s.faultDue.CompareAndSwap(true, false) {
		return false
	}
	s.inFault.Store(true)
	return true
}

func (s *scenario) faultDone() {
	if s.ctx.Err() == nil {
		s.completed.Add(1)
	}
	s.inFault.Store(false)
}

// otherBeganAfter reports whether a holder other than name began a
// holding after at.
func (s *scenario) otherBeganAfter(name string, at time.Time) bool {
	off := s.chk.Offset(at)
	for _, iv := range s.chk.Intervals() {
		if iv.Holder != name && iv.From >= off {
			return true
		}
	}
	return false
}

// waitHandoffs waits for n more handoffs; a liveness check with generous
// slack. It logs how long they took.
func (s *scenario) waitHandoffs(t *testing.T, n int, format string, args ...any) {
	t.Helper()
	const limit = 30 * time.Second
	start := time.Now()
	before := s.chk.Check().Handoffs
	if !waitUntil(limit, func() bool { return s.chk.Check().Handoffs >= before+n }) {
		t.Errorf("fewer than %d handoffs within %v %s", n, limit, fmt.Sprintf(format, args...))
		return
	}
	if d := time.Since(start); d > leaseTTL {
		t.Logf("%d handoffs took %v %s", n, d.Round(time.Millisecond), fmt.Sprintf(format, args...))
	}
}

func (s *scenario) start() {
	for _, c := range s.contenders() {
		s.wg.Go(c.loop)
	}
}

// finish stops the contenders, waits for them, checks the history and
// prints the figures.
func (s *scenario) finish() {
	t := s.t
	s.stop()
	s.wg.Wait()
	r := s.chk.Check()
	line := fmt.Sprintf("SCENARIO %s handoffs=%d faults=%d overlaps=%d regressions=%d spurious=%d losses=%d adopted=%d max_gap=%v",
		s.name, r.Handoffs, s.st.faults.Load(), len(r.Overlaps), len(r.Regressions), s.st.spurious.Load(),
		s.st.losses.Load(), s.st.adopted.Load(), r.MaxGap.Round(time.Millisecond))
	t.Log(line)
	figures.Lock()
	figures.lines = append(figures.lines, line)
	figures.Unlock()
	if s.anyHolder {
		// Its rounds may all be won by one contender: what it must show
		// is holdings, not changes of holder.
		r.Handoffs = max(r.Handoffs, min(r.Intervals, 1))
	}
	for _, p := range verdict(r, s.st.faults.Load()) {
		t.Error(p)
	}
}

// verdict lists why a scenario's run failed or proves nothing: safety
// violated, no handoff at all, or no fault that took effect (a scenario
// counts a fault only once it has seen it act).
func verdict(r checker.Report, faults int64) []string {
	var problems []string
	if !r.OK() {
		problems = append(problems, fmt.Sprintf("safety violated: %v", r))
	}
	if r.Handoffs == 0 {
		problems = append(problems, fmt.Sprintf("no handoffs at all: %v", r))
	}
	if faults == 0 {
		problems = append(problems, "no fault took effect: the run proves nothing")
	}
	return problems
}

var figures struct {
	sync.Mutex
	lines []string
}

func (c *contender) loop() {
	s := c.s
	for s.ctx.Err() == nil {
		if err := c.lease.AcquireWait(s.ctx); err != nil {
			continue // ctx ended (the loop ends) or a configuration error (reported below)
		}
		tok := c.lease.Token()
		if tok == 0 { // the holding lapsed before we looked
			c.lost(nil)
			continue
		}
		c.done = c.lease.Done()
		c.iv = s.chk.Begin(c.name, tok)
		go func(iv *checker.Interval, done <-chan struct{}) {
			<-done
			iv.End()
		}(c.iv, c.done)
		keep := true
		if s.hook != nil {
			keep = s.hook(c)
		}
		if !c.lease.IsHeld() {
			c.lost(c.iv)
			continue
		}
		if keep && !c.hold(time.Duration(10+rand.N(91))*time.Millisecond) {
			c.lost(c.iv)
			continue
		}
		c.iv.End() // IsHeld turns false as Release starts
		rctx, cancel := context.WithTimeout(context.Background(), leaseTTL)
		if err := c.lease.Release(rctx); err == nil {
			s.st.released.Add(1)
		}
		cancel()
		c.between()
	}
}

// between is the contender's work between two holdings. A contender that
// releases and at once waits again takes the key back ahead of the
// queue's first waiter most of the time (the library lets a releaser and
// a newcomer barge: see the README's waiter queue): a few milliseconds
// of other work, as real holders have, gives the queue its turns.
func (c *contender) between() {
	t := time.NewTimer(time.Duration(5+rand.N(16)) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.s.ctx.Done():
	}
}

// hold keeps the holding for d, renewing it when due, and reports whether
// it is still held.
func (c *contender) hold(d time.Duration) bool {
	end := time.NewTimer(d)
	defer end.Stop()
	renew := time.NewTicker(leaseTTL / 3)
	defer renew.Stop()
	for {
		select {
		case <-c.done:
			return false
		case <-end.C:
			return c.lease.IsHeld()
		case <-renew.C:
			_, _ = c.lease.Renew(c.s.ctx)
		case <-c.s.ctx.Done():
			return c.lease.IsHeld()
		}
	}
}

// lost handles a holding that ended without Release: it ends the interval
// (if any), asks the server whether it still shows this holder (a
// spurious loss), and releases whatever revision of ours may be left.
func (c *contender) lost(iv *checker.Interval) {
	s := c.s
	if iv != nil {
		iv.End()
		s.st.losses.Add(1)
	}
	if owner, ok := s.leaderOwner(); ok && bytes.Equal(owner, c.value) {
		s.st.spurious.Add(1)
	}
	rctx, cancel := context.WithTimeout(context.Background(), leaseTTL)
	_ = c.lease.Release(rctx)
	cancel()
}

// leaderOwner reads the key from the stream leader through the
// observer connection and returns the holder's value (nil if vacant).
func (s *scenario) leaderOwner() ([]byte, bool) {
	if s.observe == nil {
		return nil, false
	}
	req := fmt.Sprintf(`{"last_by_subj":"$KV.%s.%s"}`, s.bucket, leaseKey)
	msg, err := s.observe.Request("$JS.API.STREAM.MSG.GET.KV_"+s.bucket, []byte(req), time.Second)
	if err != nil {
		return nil, false
	}
	var resp struct {
		Message *struct {
			Hdrs []byte `json:"hdrs"`
			Data []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(msg.Data, &resp) != nil {
		return nil, false
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return nil, true
	case resp.Error != nil || resp.Message == nil:
		return nil, false
	case bytes.Contains(resp.Message.Hdrs, []byte("KV-Operation")) || bytes.Contains(resp.Message.Hdrs, []byte("Nats-Marker-Reason")):
		return nil, true
	}
	return resp.Message.Data, true
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
