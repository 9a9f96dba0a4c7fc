package natskvlease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The waiter queue. A waiter that finds the key taken registers a ticket,
// a key of its own next to the lease's with a per-message TTL that it
// renews; the ticket's first revision is its place in the queue. As in
// etcd's lock, each waiter watches only the ticket right ahead of its
// own, and the first waiter watches the lease's key: a release wakes one
// waiter, a departure from the queue wakes the one behind, and a
// ticket's renewals reach one watch. Waiters so hold the key in the
// order they began waiting. A waiter that dies or pauses stops renewing
// its ticket, which the server expires after the TTL: it blocks the
// queue for that long at most. The lease's revision-checked write on its
// own key stays the only thing that decides who holds; the queue only
// decides who tries.

// queuePrefix starts the keys of the tickets: "_waiting.<key>.<nonce>".
// Keys that start with it are the library's.
const queuePrefix = "_waiting."

// leftFirst is what the purge of a ticket carries when its waiter was
// first in the queue: the waiter behind it is first now, without asking.
const leftFirst = "first"

// departureTTL is how long the marker of a ticket that left stays: it
// has told the watch behind it at once, and the queue's listings need
// not wade through markers.
const departureTTL = time.Second

// ticketValue is what a ticket stores: its owner's nonce and its place.
// The first write carries Place 0 (its own revision is the place);
// renewals carry the place.
type ticketValue struct {
	Nonce string `json:"n"`
	Place uint64 `json:"p,omitempty"`
}

// queue is one waiter's ticket.
type queue struct {
	lease  *Lease
	key    string // the ticket's key
	nonce  string
	place  uint64
	rev    uint64 // the ticket's latest revision
	sentAt time.Time
	// retryAt is when to try again after a renewal that could not be
	// made: never sooner, so that a server out of reach is not flooded.
	retryAt time.Time
}

// queueFilter is the filter that matches the tickets of key.
func queueFilter(key string) string { return queuePrefix + key + ".*" }

// canQueue reports whether the lease can keep a ticket: its writes carry
// per-message TTLs, which a dead waiter's ticket needs to expire, and it
// can read the tickets (a bound KeyValue).
func (l *Lease) canQueue() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sentTTL > 0 && l.ops.js != nil
}

// joinQueue writes a new ticket for this waiter.
func (l *Lease) joinQueue(ctx context.Context) (*queue, error) {
	q := &queue{lease: l}
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
// with a new ticket, and renew reports it. A renewal that cannot be made
// is tried again after an attempt's timeout.
func (q *queue) renew(ctx context.Context) (rejoined bool) {
	err := q.write(ctx, q.rev)
	if err != nil && isRevisionMismatch(err) {
		if err = q.join(ctx); err == nil {
			rejoined = true
		}
	}
	if err != nil {
		q.retryAt = time.Now().Add(q.lease.attemptTimeout())
	}
	return rejoined
}

// leave purges the ticket: its owner holds the lease, or gave up. The
// purge says whether the owner was first, for the waiter behind.
func (q *queue) leave(first bool) {
	l := q.lease
	ctx, cancel := context.WithTimeout(context.Background(), l.attemptTimeout())
	defer cancel()
	var note []byte
	if first {
		note = []byte(leftFirst)
	}
	if _, err := l.ops.purgeNoting(ctx, q.key, q.rev, departureTTL, note); err != nil {
		l.logger.Debug("natskvlease: leaving the queue; the ticket expires after its TTL", "error", err)
	}
}

// ticket is a live ticket found by a listing of the queue.
type ticket struct {
	key   string
	place uint64
}

// ahead lists the live tickets and returns the one right ahead of this
// waiter's (the youngest older one), or false if this waiter is first.
func (q *queue) ahead(ctx context.Context) (ticket, bool, error) {
	l := q.lease
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	var best ticket
	found := false
	err := l.eachLiveTicket(actx, q.key, func(t ticket) bool {
		if t.place < q.place && (!found || t.place > best.place) {
			best, found = t, true
		}
		return true
	})
	return best, found, err
}

// eachLiveTicket lists the key's queue and calls fn with each live
// ticket but own, until fn returns false.
func (l *Lease) eachLiveTicket(ctx context.Context, own string, fn func(ticket) bool) error {
	return l.ops.lastPerSubject(ctx, queueFilter(l.cfg.Key), func(m *nats.Msg) bool {
		t, ok := ticketOf(m, l.ops.subj.stored)
		if !ok || t.key == own {
			return true
		}
		return fn(t)
	})
}

// ticketOf reads a listed ticket: its key and place, if it is live
// rather than the marker of one that left or expired.
func ticketOf(m *nats.Msg, stored string) (ticket, bool) {
	if isMarker(m.Header) {
		return ticket{}, false
	}
	subj := m.Header.Get(jetstream.SubjectHeader)
	if len(subj) <= len(stored) {
		return ticket{}, false
	}
	var v ticketValue
	if json.Unmarshal(m.Data, &v) != nil {
		return ticket{}, false
	}
	place := v.Place
	if place == 0 {
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return ticket{}, false
		}
		place = seq
	}
	return ticket{key: subj[len(stored):], place: place}, true
}

// ticketGone reports whether a ticket last seen written at seen has
// expired by now, unless renewed unseen.
func ticketGone(seen, now time.Time, ttl time.Duration) bool {
	return !now.Before(ticketGoneAt(seen, ttl))
}

// ticketGoneAt is when ticketGone turns true.
func ticketGoneAt(seen time.Time, ttl time.Duration) time.Time {
	return seen.Add(ticketLife(ttl))
}

// ticketLife is how long after it was last seen written a ticket is
// taken to be live: its TTL, and a little for the watch's delivery. Its
// waiter renews it every third of a TTL; the server's expiry marker
// says it is gone at once where the bucket writes markers, and this
// serves buckets that do not, and watches gone quiet.
func ticketLife(ttl time.Duration) time.Duration {
	if ttl == 0 {
		ttl = DefaultBucketTTL
	}
	return ttl + ttl/10
}

// A holder does not watch the queue, and a release frees the key for
// the first waiter, who learns of it from its watch. Were the releaser
// to wait again at once, it would write on its own release marker one
// round trip ahead of that waiter and win every time: waiters would
// starve behind a holder that unlocks and locks in a loop. So
// AcquireWait, about to write on the marker of this lease's own
// release, may first look at the queue, and go behind the waiters it
// finds.
//
// An uncontended relock must stay one write, so the look is taken in
// steps, each only if the one before says it might matter:
//
//  1. Was the holding crowded? Another write reached the bucket's stream
//     between its own writes, or between the vacancy it was written on
//     and its first: a gap in revisions, which are stream sequences,
//     shows it at no cost. In a bucket of its own, an uncontended relock
//     stops here.
//  2. Was a ticket of this key written since that vacancy? One read
//     with one reply: the sequence of the latest message on the key's
//     tickets. In a bucket that other keys write to, a relock with no
//     one queued stops here, one round trip later.
//  3. Is another waiter's ticket live? Only then is the queue listed.
//
// A waiter that queues while the key is held writes its ticket then; a
// first waiter beaten to a vacancy writes its ticket again at once, so
// that the holding that beat it passes steps 1 and 2. A holder that
// relocks in a tight loop so gets the key back at most twice before the
// first waiter has it.

// releasedState is the latest release, for the acquisition after it.
type releasedState struct {
	rev     uint64 // the release's marker: the vacancy it made
	crowded bool   // step 1
	on      uint64 // the vacancy the released holding was written on
}

// latestTicket reads the sequence of the latest message on the key's
// tickets, 0 for none.
func (l *Lease) latestTicket(ctx context.Context) (uint64, error) {
	s, err := l.ops.leaderGet(ctx, queueFilter(l.cfg.Key))
	return s.rev, err
}

// noteRelease records a release, for the next acquisition.
func (l *Lease) noteRelease(r releasedState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.released = r
}

// yieldsToQueue reports whether AcquireWait should take a place in the
// queue at once instead of trying first: the key is vacant at this
// lease's own release marker, and steps 1 to 3 above find another
// waiter's live ticket. It answers once per release. A read that fails
// lets the acquisition go ahead: the queue is about order, not safety.
func (l *Lease) yieldsToQueue(ctx context.Context) bool {
	snap, known := l.lastSeen()
	l.mu.Lock()
	r, own := l.released, l.ownTicket
	l.released = releasedState{}
	l.mu.Unlock()
	if !known || !snap.vacant || !snap.revKnown || snap.rev != r.rev || !r.crowded || !l.canQueue() {
		return false // step 1
	}
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	if latest, err := l.latestTicket(actx); err == nil && latest <= r.on {
		return false // step 2: no ticket written since the holding's vacancy
	}
	waiters := false
	err := l.eachLiveTicket(actx, own, func(ticket) bool {
		waiters = true
		return false
	})
	if err != nil {
		l.logger.Debug("natskvlease: cannot list the waiter queue; acquiring without it", "error", err)
	}
	if waiters {
		l.logger.Debug("natskvlease: the key goes first to the waiters that queued while this lease held it", "key", l.cfg.Key)
	}
	return waiters // step 3
}
