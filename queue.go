package natskvlease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The waiter queue. A waiter that finds the key taken registers a ticket,
// a key of its own next to the lease's with a per-message TTL that it
// renews; the ticket's first revision is its place in the queue. Every
// waiter's watch shows the lease's key and all tickets; when the key
// frees, only the waiter whose ticket is oldest writes. A release so wakes
// one writer, not all, and waiters hold the key in the order they began
// waiting. A waiter that dies or pauses stops renewing its ticket, which
// the server expires after the TTL: it blocks the queue for that long at
// most. The lease's revision-checked write on its own key stays the only
// thing that decides who holds; the queue only decides who tries.

// queuePrefix starts the keys of the tickets: "_waiting.<key>.<nonce>".
// Keys that start with it are the library's.
const queuePrefix = "_waiting."

// ticketValue is what a ticket stores: its owner's nonce and its place.
// The first write carries Place 0 (its own revision is the place);
// renewals carry the place.
type ticketValue struct {
	Nonce string `json:"n"`
	Place uint64 `json:"p,omitempty"`
}

// queue is one waiter's ticket and its view of the others'.
type queue struct {
	lease  *Lease
	key    string // the ticket's key
	filter string // the tickets of the lease's key, for the watch
	nonce  string
	place  uint64
	rev    uint64 // the ticket's latest revision
	sentAt time.Time
	// retryAt is when to try again after a renewal that could not be
	// made: never sooner, so that a server out of reach is not flooded.
	retryAt time.Time
	// places holds every live ticket seen, by key: their places, and
	// when each was last seen written.
	places map[string]ticketSeen
}

// ticketSeen is a live ticket as the watch last showed it.
type ticketSeen struct {
	place uint64
	seen  time.Time
}

// queueFilter is the watch filter that matches the tickets of key.
func queueFilter(key string) string { return queuePrefix + key + ".*" }

// canQueue reports whether the lease can keep a ticket: its writes carry
// per-message TTLs, which a dead waiter's ticket needs to expire.
func (l *Lease) canQueue() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sentTTL > 0
}

// joinQueue writes a new ticket for this waiter.
func (l *Lease) joinQueue(ctx context.Context) (*queue, error) {
	q := &queue{lease: l, filter: queueFilter(l.cfg.Key), places: make(map[string]ticketSeen)}
	if err := q.join(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// join takes a place at the back of the queue with a new ticket.
func (q *queue) join(ctx context.Context) error {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails
	q.nonce = hex.EncodeToString(b)
	q.key = queuePrefix + q.lease.cfg.Key + "." + q.nonce
	q.place = 0
	if err := q.write(ctx, 0); err != nil {
		return err
	}
	q.place = q.rev
	q.places[q.key] = ticketSeen{place: q.place, seen: q.sentAt}
	q.lease.mu.Lock()
	q.lease.ownTicket = q.key
	q.lease.mu.Unlock()
	return nil
}

// write writes the ticket, expecting revision expected (0: a new one).
func (q *queue) write(ctx context.Context, expected uint64) error {
	l := q.lease
	v, _ := json.Marshal(ticketValue{Nonce: q.nonce, Place: q.place}) // plain fields: cannot fail
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	sentAt := time.Now()
	rev, err := l.ops.write(actx, q.key, v, expected, l.sentTTL)
	if err != nil {
		return err
	}
	q.rev, q.sentAt = rev, sentAt
	return nil
}

// renewDue is how long until the ticket is due for renewal: a third of
// the TTL after its last write was sent, or soon after a renewal that
// could not be made.
func (q *queue) renewDue() time.Duration {
	due := q.sentAt.Add(renewAfter(q.lease.TTL(), defaultRenewRatio))
	if q.retryAt.After(due) {
		due = q.retryAt
	}
	return max(time.Until(due), 0)
}

// renew renews the ticket. If the ticket has expired meanwhile (its
// waiter was paused or cut off), the waiter joins again, at the back,
// with a new ticket. A renewal that cannot be made is tried again after
// an attempt's timeout.
func (q *queue) renew(ctx context.Context) {
	err := q.write(ctx, q.rev)
	if err != nil && isRevisionMismatch(err) {
		delete(q.places, q.key)
		err = q.join(ctx)
	}
	if err != nil {
		q.retryAt = time.Now().Add(q.lease.attemptTimeout())
	}
}

// leave purges the ticket: its owner holds the lease, or gave up.
func (q *queue) leave() {
	l := q.lease
	ctx, cancel := context.WithTimeout(context.Background(), l.attemptTimeout())
	defer cancel()
	if _, err := l.ops.purge(ctx, q.key, q.rev, l.sentTTL); err != nil {
		l.logger.Debug("natskvlease: leaving the queue; the ticket expires after its TTL", "error", err)
	}
}

// isTicket reports whether a watched entry is a ticket rather than the
// lease's key.
func (q *queue) isTicket(e jetstream.KeyValueEntry) bool {
	return strings.HasPrefix(e.Key(), queuePrefix)
}

// see records a watched ticket entry, seen at now: a live ticket's
// place, or its end.
func (q *queue) see(e jetstream.KeyValueEntry, now time.Time) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(q.places, e.Key())
		return
	}
	var v ticketValue
	if json.Unmarshal(e.Value(), &v) != nil {
		return
	}
	place := v.Place
	if place == 0 {
		place = e.Revision()
	}
	q.places[e.Key()] = ticketSeen{place: place, seen: now}
}

// forget drops every ticket seen but this waiter's own, before a new
// watch of the tickets shows the live ones again.
func (q *queue) forget() {
	for k := range q.places {
		if k != q.key {
			delete(q.places, k)
		}
	}
}

// first reports whether this waiter's ticket is the oldest live one at
// now, so that it is the one to write when the key frees.
func (q *queue) first(now time.Time) bool {
	return ticketsAhead(q.places, q.key, q.place, now, q.lease.TTL()) == 0
}

// staleIn is how long until a ticket ahead of this waiter's, not seen
// renewed meanwhile, has outlived its TTL: the next time first may turn
// true without a word from the watch. Zero: no ticket ahead.
func (q *queue) staleIn(now time.Time) time.Duration {
	var soonest time.Duration
	for k, t := range q.places {
		if k == q.key || t.place >= q.place {
			continue
		}
		if d := t.seen.Add(ticketLife(q.lease.TTL())).Sub(now); d > 0 && (soonest == 0 || d < soonest) {
			soonest = d
		}
	}
	return soonest
}

// ticketsAhead counts the live tickets with an older place than place
// (own's). A ticket not seen written for longer than its life has
// expired on the server: its waiter renews it every third of a TTL. The
// server's expiry marker says so at once where the bucket writes
// markers; this also serves buckets that do not, and a watch gone quiet.
func ticketsAhead(places map[string]ticketSeen, own string, place uint64, now time.Time, ttl time.Duration) int {
	n := 0
	for k, t := range places {
		if k != own && t.place < place && now.Before(t.seen.Add(ticketLife(ttl))) {
			n++
		}
	}
	return n
}

// ticketLife is how long after it was last seen written a ticket is
// taken to be live: its TTL, and a little for the watch's delivery.
func ticketLife(ttl time.Duration) time.Duration {
	if ttl == 0 {
		ttl = DefaultBucketTTL
	}
	return ttl + ttl/10
}

// A holder does not watch the queue, and a release frees the key for
// the first waiter, who learns of it from its watch. Were the releaser
// to try again at once, it would write on its own release marker one
// round trip ahead of that waiter and win every time: waiters would
// starve behind a holder that unlocks and locks in a loop. So a release
// asks the server which tickets are live, beside its purge and without
// waiting for the answer, and the lease's next acquisition goes behind
// the waiters that were queued: it reports the key taken, and
// AcquireWait takes a place at the back of the queue.

// releasedState is the latest release and the queue check sent with it.
type releasedState struct {
	rev   uint64      // the release's marker: the vacancy it made
	check *queueCheck // nil when none was sent
}

// queueCheck is a request for the live tickets of the key, whose answer
// comes in the background.
type queueCheck struct {
	done     chan struct{}
	waiters  bool // some other waiter's ticket is live; set before done closes
	answered bool
}

// checkQueue sends a queue check for the lease's key, or returns nil if
// the lease keeps no queue or cannot ask (an unbound KeyValue). The
// answer is read on a goroutine of its own that ends with it, within an
// attempt's timeout.
func (l *Lease) checkQueue() *queueCheck {
	l.mu.Lock()
	skip, own := l.noQueueCheck || l.sentTTL <= 0, l.ownTicket
	l.mu.Unlock()
	o := l.ops
	if skip || o.js == nil {
		return nil
	}
	nc := o.js.Conn()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	req, _ := json.Marshal(multiLastRequest{MultiLast: []string{o.subj.stored + queueFilter(l.cfg.Key)}}) // plain fields: cannot fail
	if err := nc.PublishRequest(o.subj.api+"DIRECT.GET."+o.subj.stream, inbox, req); err != nil {
		_ = sub.Unsubscribe()
		return nil
	}
	c := &queueCheck{done: make(chan struct{})}
	ownSubject := ""
	if own != "" {
		ownSubject = o.subj.stored + own
	}
	timeout := l.attemptTimeout()
	go func() {
		defer close(c.done)
		defer func() { _ = sub.Unsubscribe() }()
		deadline := time.Now().Add(timeout)
		for {
			m, err := sub.NextMsg(time.Until(deadline))
			if err != nil {
				c.answered = !errors.Is(err, nats.ErrTimeout)
				return
			}
			if m.Header.Get("Status") != "" {
				// The end of the batch (204), no tickets at all (404), or
				// an error: what came before is the answer.
				c.answered = true
				return
			}
			if !isMarker(m.Header) && m.Header.Get(jetstream.SubjectHeader) != ownSubject {
				c.waiters, c.answered = true, true
				return
			}
		}
	}()
	return c
}

// multiLastRequest asks a direct get for the last message of every
// subject that matches (nats-server 2.11 and later).
type multiLastRequest struct {
	MultiLast []string `json:"multi_last"`
}

// noteRelease records a release's marker and the queue check sent
// with it, for the next acquisition.
func (l *Lease) noteRelease(rev uint64, c *queueCheck) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.released = releasedState{rev: rev, check: c}
}

// yieldToQueue reports whether an acquisition about to write on the
// vacancy at rev should go behind queued waiters instead: rev is this
// lease's own release marker, and the queue check sent with that
// release found another waiter's ticket. It answers once per release.
func (l *Lease) yieldToQueue(ctx context.Context, rev uint64) bool {
	l.mu.Lock()
	r := l.released
	l.released = releasedState{}
	l.mu.Unlock()
	if r.check == nil || r.rev != rev {
		return false
	}
	select {
	case <-r.check.done:
	case <-ctx.Done():
		return false
	}
	if !r.check.answered {
		l.mu.Lock()
		l.noQueueCheck = true
		l.mu.Unlock()
		l.logger.Debug("natskvlease: the queue check went unanswered; releases send none from now on (allow the bucket's DIRECT.GET subject)")
	}
	return r.check.waiters
}
