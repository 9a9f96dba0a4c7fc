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
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails
	nonce := hex.EncodeToString(b)
	q := &queue{
		lease:  l,
		key:    queuePrefix + l.cfg.Key + "." + nonce,
		filter: queueFilter(l.cfg.Key),
		nonce:  nonce,
		places: make(map[string]uint64),
	}
	if err := q.write(ctx, 0); err != nil {
		return nil, err
	}
	q.place = q.rev
	q.places[q.key] = q.place
	return q, nil
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

// renewDue is how long until the ticket is due for renewal.
func (q *queue) renewDue() time.Duration {
	return max(time.Until(q.sentAt.Add(renewAfter(q.lease.TTL(), defaultRenewRatio))), 0)
}

// renew renews the ticket. If it has expired meanwhile (the waiter was
// paused), the waiter joins again, at the back.
func (q *queue) renew(ctx context.Context) {
	err := q.write(ctx, q.rev)
	if err == nil || !isRevisionMismatch(err) {
		return
	}
	delete(q.places, q.key)
	q.place = 0
	if err := q.write(ctx, 0); err == nil {
		q.place = q.rev
		q.places[q.key] = q.place
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
