package faulttest

// Issue 9: an acknowledged lease write can be wiped by the expiry of the
// revision it was written on.
//
// When a key's last message X expires (its Nats-TTL, or the bucket's
// MaxAge), the stream leader alone decides, from its own store, what to
// do: memStore.expireMsgs (server/memstore.go; fileStore.expireMsgs in
// server/filestore.go) asks shouldProcessSdm whether X is its subject's
// last message and then calls handleRemovalOrSdm with
// sdm = last && !isSubjectDeleteMarker(X) (server/sdm.go).
//
//   - X is a put or a KV DEL marker: the leader proposes a new message, a
//     subject delete marker with Nats-Marker-Reason: MaxAge and
//     Nats-Rollup: sub, carrying no expected-sequence header.
//   - X is a server marker (Nats-Marker-Reason) or a KV PURGE marker: the
//     leader proposes only the removal of sequence X (the rmcb callback).
//
// "Last" is judged on the leader's store, which does not yet hold a
// write W proposed on X (Nats-Expected-Last-Subject-Sequence: X) that is
// still replicating. So if the followers are slow just then, the raft log
// reads W, M: W is applied and acknowledged to its writer, then the
// marker's rollup purges W. The writer believes it holds; the key is
// vacant and anyone can acquire it. With a removal of X instead of M, W
// survives.
//
// TestExpiryWipesAcknowledgedWrite makes the followers slow at that
// instant: it freezes every route (internal/faultproxy) from 60 ms before
// X's expiry to 280 ms after, and has a lease write on X 30 ms before the
// expiry, from a client of the leader's node. Each row is a way a lease
// comes to write on a revision that is about to expire; a third lease
// then polls the key while the writer still believes it holds.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

const (
	wipeFreezeBefore = 60 * time.Millisecond  // freeze starts this long before X's expiry
	wipeAimBefore    = 30 * time.Millisecond  // the aimed write, this long before it
	wipeThawAfter    = 280 * time.Millisecond // the freeze ends this long after it
	wipeRenewBefore  = 300 * time.Millisecond // row F renews at 0.85 of the 2 s TTL
	// onTime bounds how far the freeze and the aimed call may miss their
	// instants, and aimSlack how much later than its aim the write may
	// reach the leader (an acquire that reads first sends it one round
	// trip later).
	onTime   = 15 * time.Millisecond
	aimSlack = 25 * time.Millisecond
)

// wipeRow is one way a lease comes to write on a revision X just as X
// expires.
type wipeRow struct {
	name string
	what string
	// lead is how long after the row's preparation starts X expires,
	// roughly: for the schedule only.
	lead time.Duration
	// prepare writes X on key and returns the lease that will write on
	// it (its "aimed" lease).
	prepare func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error)
	// xKind, if set, is the kind X must have for the row to mean
	// anything (rows A and C leave it to the library, which may release
	// with another kind of marker).
	xKind string
	renew bool // the aimed operation is a Renew, not an Acquire
	// jitter is how much later than lead X may expire: the schedule
	// reserves that much more.
	jitter time.Duration
}

// wipeConns are the connections of the leases: a, b and the prober c,
// each on its own connection to the leader's node.
type wipeConns struct{ a, b, c jetstream.KeyValue }

func acquireNow(ctx context.Context, l *natskvlease.Lease) error {
	ok, err := l.Acquire(ctx)
	if !ok && err == nil {
		err = errors.New("key taken")
	}
	return err
}

var wipeRows = []wipeRow{
	{
		name: "A", what: "A releases; A re-acquires on the release marker",
		lead: 2 * time.Second,
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			if err := acquireNow(ctx, a); err != nil {
				return nil, err
			}
			return a, a.Release(ctx)
		},
	},
	{
		name: "B", what: "A lapses; A re-acquires on its own put",
		lead: 2 * time.Second, xKind: "put",
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			return a, acquireNow(ctx, a)
		},
	},
	{
		name: "C", what: "A releases; B acquires on the release marker",
		lead: 2 * time.Second,
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			if err := acquireNow(ctx, a); err != nil {
				return nil, err
			}
			return newLease(w.b, key, "B"), a.Release(ctx)
		},
	},
	{
		name: "D", what: "control: B acquires on the server's MaxAge marker",
		lead: 4 * time.Second, xKind: "MaxAge", jitter: 270 * time.Millisecond,
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			if err := acquireNow(ctx, a); err != nil {
				return nil, err
			}
			// A lapses; wait for the server's marker.
			deadline := time.Now().Add(3 * leaseTTL)
			for {
				m, err := e.latest(key)
				if err == nil && m.kind() == "MaxAge" {
					return newLease(w.b, key, "B"), nil
				}
				if time.Now().After(deadline) {
					return nil, fmt.Errorf("no MaxAge marker after A lapsed (latest %v, %v)", m.kind(), err)
				}
				sleepUntil(ctx, time.Now().Add(5*time.Millisecond))
			}
		},
	},
	{
		name: "E", what: "control: B acquires on a KV PURGE marker",
		lead: 2 * time.Second, xKind: "PURGE",
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			if err := acquireNow(ctx, a); err != nil {
				return nil, err
			}
			return newLease(w.b, key, "B"), w.a.Purge(ctx, key, jetstream.LastRevision(a.Revision()))
		},
	},
	{
		name: "F", what: "A renews on its own put 0.3 s before it expires",
		lead: 2 * time.Second, xKind: "put", renew: true,
		prepare: func(ctx context.Context, e *expiryEnv, w *wipeConns, key string) (*natskvlease.Lease, error) {
			a := newLease(w.a, key, "A")
			return a, acquireNow(ctx, a)
		},
	},
}

// window returns, relative to X's expiry, when the row freezes the
// routes, aims its operation and resumes the routes.
func (r wipeRow) window() (from, aim, to time.Duration) {
	if r.renew {
		return -wipeRenewBefore - 5*time.Millisecond, -wipeRenewBefore, wipeThawAfter
	}
	return -wipeFreezeBefore, -wipeAimBefore, wipeThawAfter
}

// wipeTrial is what one trial saw.
type wipeTrial struct {
	row   string
	key   string
	err   error
	xKind string
	clash bool // the freeze would have fallen outside its reserved slot

	freezeErr, thawErr time.Duration // freeze start and end, against plan
	held               int64         // route chunks held by the freeze
	callErr            time.Duration // the aimed call, against its aim
	arrival            time.Duration // the aimed write reached the leader, against the aim
	wrote              bool          // the aimed write was seen at the leader
	believed           bool          // the aimed operation reported success
	returnedAfterThaw  bool

	state    string        // the leader's view of the key right after: kept, wiped, vacant, other
	lateness time.Duration // of the expiry marker, if one appeared, after X's expiry
	marker   bool
	writeOff time.Duration // when the aimed write reached the leader, relative to X's expiry
	thawOff  time.Duration // when the freeze ended, relative to X's expiry
	two      bool          // a third lease acquired while the aimed lease held
	leaderOK bool          // the stream leader did not change
}

// evidence names how the trial shows that X expired while the aimed
// write was pending, or "" if it does not: an expiry marker the leader
// proposed after the write arrived and before the routes resumed; or,
// for an expiry that writes no marker, a write that arrived before X's
// expiry and was acknowledged only after the freeze (the markers of the
// other trials show the leader acting within the freeze); or a key left
// vacant by the expiry.
func (tr *wipeTrial) evidence() string {
	switch {
	case tr.marker && tr.lateness >= -5*time.Millisecond && tr.lateness < tr.thawOff &&
		(!tr.wrote || tr.lateness > tr.writeOff):
		return "marker"
	case !tr.marker && tr.believed && tr.wrote && tr.writeOff < 0 && tr.returnedAfterThaw:
		return "pending"
	case !tr.marker && tr.state == "vacant":
		return "vacant"
	}
	return ""
}

// effective lists what went wrong with the fault in a trial, if anything.
func (tr *wipeTrial) problems(row wipeRow) []string {
	var p []string
	if tr.err != nil {
		return []string{tr.err.Error()}
	}
	if tr.clash {
		p = append(p, "freeze window clashed with another trial")
	}
	if row.xKind != "" && tr.xKind != row.xKind {
		p = append(p, fmt.Sprintf("X is %s, want %s", tr.xKind, row.xKind))
	}
	if absDur(tr.freezeErr) > onTime || absDur(tr.thawErr) > onTime {
		p = append(p, fmt.Sprintf("freeze off by %v, thaw by %v", tr.freezeErr, tr.thawErr))
	}
	if tr.held == 0 {
		p = append(p, "the freeze held no route traffic")
	}
	if absDur(tr.callErr) > onTime {
		p = append(p, fmt.Sprintf("aimed call off by %v", tr.callErr))
	}
	if tr.wrote && (tr.arrival < -onTime || tr.arrival > aimSlack) {
		p = append(p, fmt.Sprintf("aimed write reached the leader %v from its aim", tr.arrival))
	}
	if tr.believed && !tr.wrote {
		p = append(p, "success reported but no write seen")
	}
	if tr.evidence() == "" {
		p = append(p, fmt.Sprintf("no sign of the expiry during the freeze (marker %v %v after X's expiry, write %v, thaw %v, state %s)",
			tr.marker, tr.lateness, tr.writeOff, tr.thawOff, tr.state))
	}
	if !tr.leaderOK {
		p = append(p, "the stream leader changed")
	}
	return p
}

// span is an interval of the schedule, relative to its start.
type span struct{ from, to time.Duration }

func (s span) overlaps(o span) bool { return s.from < o.to && o.from < s.to }

// schedule gives each trial a start so that no trial's freeze overlaps
// another's, nor another's preparation (whose writes a freeze would
// delay, moving its X): it returns each trial's start and reserved
// freeze window, relative to the schedule's start.
func schedule(rows []wipeRow) (starts []time.Duration, windows []span) {
	const prep, margin, step = 60 * time.Millisecond, 25 * time.Millisecond, 10 * time.Millisecond
	var busy []span
	free := func(s span) bool {
		for _, b := range busy {
			if s.overlaps(b) {
				return false
			}
		}
		return true
	}
	for _, r := range rows {
		from, _, to := r.window()
		for p := time.Duration(0); ; p += step {
			ps := span{p, p + prep}
			ws := span{p + r.lead + from - margin, p + r.lead + to + margin + r.jitter}
			if free(ps) && free(ws) && !ps.overlaps(ws) {
				busy = append(busy, ps, ws)
				starts, windows = append(starts, p), append(windows, ws)
				break
			}
		}
	}
	return starts, windows
}

func TestExpiryWipesAcknowledgedWrite(t *testing.T) {
	trials := envInt(t, "NATSKVLEASE_WIPE_TRIALS", 6)
	e := newExpiryEnv(t, "wipe")
	w := &wipeConns{a: e.kv(), b: e.kv(), c: e.kv()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	defer e.freeze(false)

	var plan []wipeRow
	for range trials {
		plan = append(plan, wipeRows...)
	}
	starts, windows := schedule(plan)
	base := time.Now().Add(100 * time.Millisecond)
	results := make([]*wipeTrial, len(plan))
	var wg sync.WaitGroup
	for i, r := range plan {
		wg.Go(func() {
			key := fmt.Sprintf("wipe.%s.%d", r.name, i)
			results[i] = runWipeTrial(ctx, e, w, r, key, base.Add(starts[i]), base.Add(windows[i].from), base.Add(windows[i].to))
		})
	}
	wg.Wait()
	t.Logf("storage: %s; %d trials per row, %v in all", map[bool]string{false: "memory", true: "file"}[e.file], trials, time.Since(base).Round(100*time.Millisecond))

	twoTotal := 0
	for _, r := range wipeRows {
		var (
			n, two, believed, wiped, markers, leaderMoves, effective int
			kinds                                                    = map[string]int{}
			ev                                                       = map[string]int{}
			arrivals, lates, freezeErrs                              []time.Duration
		)
		for i, tr := range results {
			if plan[i].name != r.name {
				continue
			}
			n++
			if ps := tr.problems(r); len(ps) > 0 {
				// A loaded machine can push a trial off its schedule; it
				// then proves nothing, and is not counted as effective.
				t.Logf("row %s trial %s: the fault did not take effect: %s", r.name, tr.key, strings.Join(ps, "; "))
			} else {
				effective++
			}
			kinds[tr.xKind]++
			ev[tr.evidence()]++
			if tr.two {
				two++
			}
			if tr.believed {
				believed++
			}
			if tr.state == "wiped" {
				wiped++
			}
			if tr.marker {
				markers++
				lates = append(lates, tr.lateness)
			}
			if tr.wrote {
				arrivals = append(arrivals, tr.arrival)
			}
			if !tr.leaderOK {
				leaderMoves++
			}
			freezeErrs = append(freezeErrs, absDur(tr.freezeErr), absDur(tr.thawErr), absDur(tr.callErr))
			if r.renew && tr.believed && tr.state != "kept" {
				t.Errorf("row %s trial %s: Renew returned true but the leader shows %s", r.name, tr.key, tr.state)
			}
		}
		twoTotal += two
		// Most trials must have hit their instants, or the row proves
		// nothing; a few missed on a loaded machine are tolerated.
		if effective < (n+1)/2 {
			t.Errorf("row %s: the fault took effect in only %d of %d trials", r.name, effective, n)
		}
		t.Logf("row %s: %d/%d two holders (%s); faults on target %d/%d; believed %d, wiped after ack %d, X kinds %v, evidence %v, expiry markers %d late %s, write arrival vs aim %s, max freeze/call error %v, leader changes %d",
			r.name, two, n, r.what, effective, n, believed, wiped, kinds, ev, markers, spread(lates), spread(arrivals), slices.Max(freezeErrs), leaderMoves)
	}
	if twoTotal > 0 {
		t.Errorf("%d trials had two holders: an acknowledged write was wiped by the expiry of the revision it was written on", twoTotal)
	}
}

// spread formats durations as min/median/max.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	slices.Sort(ds)
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("%v/%v/%v", r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]))
}

// runWipeTrial runs one trial of row r on key: it prepares X, freezes
// the routes around X's expiry, aims the row's operation at it, then
// looks at the leader's store and lets a third lease try the key.
func runWipeTrial(ctx context.Context, e *expiryEnv, w *wipeConns, r wipeRow, key string, start, slotFrom, slotTo time.Time) *wipeTrial {
	tr := &wipeTrial{row: r.name, key: key, leaderOK: true}
	sleepUntil(ctx, start)
	h, err := r.prepare(ctx, e, w, key)
	if err != nil {
		tr.err = fmt.Errorf("prepare: %w", err)
		return tr
	}
	x, err := e.latest(key)
	if err != nil {
		tr.err = fmt.Errorf("read X: %w", err)
		return tr
	}
	tr.xKind = x.kind()
	exp := x.expiry(e.maxAge)
	fromOff, aimOff, toOff := r.window()
	from, aim, to := exp.Add(fromOff), exp.Add(aimOff), exp.Add(toOff)
	if from.Before(slotFrom) || to.After(slotTo) || time.Until(from) < 0 {
		tr.clash = true
		return tr
	}

	sleepUntil(ctx, from)
	heldBefore := e.held()
	e.freeze(true)
	tr.freezeErr = time.Since(from)

	sleepUntil(ctx, aim)
	type outcome struct {
		ok  bool
		err error
		at  time.Time
	}
	done := make(chan outcome, 1)
	called := time.Now()
	tr.callErr = called.Sub(aim)
	go func() {
		var o outcome
		if r.renew {
			o.ok, o.err = h.Renew(ctx)
		} else {
			o.ok, o.err = h.Acquire(ctx)
		}
		o.at = time.Now()
		done <- o
	}()

	sleepUntil(ctx, to)
	thawed := time.Now()
	e.freeze(false)
	tr.thawErr = thawed.Sub(to)
	tr.thawOff = thawed.Sub(exp)
	tr.held = e.held() - heldBefore
	o := <-done
	tr.believed = o.ok && o.err == nil
	tr.returnedAfterThaw = !o.at.Before(thawed)
	subject := "$KV." + e.bucket + "." + key
	if at, ok := e.spy.firstWrite(subject, hValue(r), called.Add(-time.Millisecond)); ok {
		tr.wrote, tr.arrival, tr.writeOff = true, at.Sub(aim), at.Sub(exp)
	}

	// The leader's view, once the marker (if any) proposed at the expiry
	// has been applied: it follows the aimed write in the log.
	mine := h.Revision()
	deadline := time.Now().Add(150 * time.Millisecond)
	for {
		m, err := e.latest(key)
		switch {
		case errors.Is(err, errNoMsg):
			tr.state = "vacant"
		case err != nil:
			tr.state = "error: " + err.Error()
		case m.Seq > x.Seq && m.kind() == "MaxAge":
			tr.marker, tr.lateness = true, m.Time.Sub(exp)
			tr.state = "other marker"
			if tr.believed && m.Seq > mine {
				tr.state = "wiped"
			}
		case tr.believed && m.Seq == mine && m.kind() == "put":
			tr.state = "kept"
		default:
			tr.state = fmt.Sprintf("%s at %d", m.kind(), m.Seq)
		}
		if tr.state == "wiped" || time.Now().After(deadline) {
			break
		}
		sleepUntil(ctx, time.Now().Add(5*time.Millisecond))
	}

	if tr.believed {
		tr.two = probe(ctx, w.c, key, h)
	}
	tr.leaderOK = e.c.StreamLeader(e.stream) == e.leader
	return tr
}

// hValue is the value the row's aimed lease writes.
func hValue(r wipeRow) string {
	switch r.name {
	case "C", "D", "E":
		return "B"
	}
	return "A"
}

// probe has a third lease try key every 10 ms while h holds it, and
// reports whether it acquired while h still believed it held.
func probe(ctx context.Context, kv jetstream.KeyValue, key string, h *natskvlease.Lease) bool {
	c := newLease(kv, key, "C")
	deadline := h.Deadline()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ok, err := c.Acquire(ctx)
		if ok && err == nil {
			two := h.IsHeld()
			_ = c.Release(ctx)
			return two
		}
		sleepUntil(ctx, time.Now().Add(10*time.Millisecond))
	}
	return false
}
