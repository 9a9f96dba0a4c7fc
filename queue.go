package natskvlease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

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
	// places holds every live ticket seen, by key: their places.
	places map[string]uint64
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
	q := &queue{lease: l, filter: queueFilter(l.cfg.Key), places: make(map[string]uint64)}
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
	q.places[q.key] = q.place
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

// see records a watched ticket entry: a live ticket's place, or its end.
func (q *queue) see(e jetstream.KeyValueEntry) {
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
	q.places[e.Key()] = place
}

// first reports whether this waiter's ticket is the oldest live one, so
// that it is the one to write when the key frees.
func (q *queue) first() bool {
	for k, p := range q.places {
		if p < q.place && k != q.key {
			return false
		}
	}
	return true
}
