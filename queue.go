package natskvlease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
var leftFirst = []byte("first")

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
		note = leftFirst
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
	err := l.ops.lastPerSubject(actx, queueFilter(l.cfg.Key), func(m *nats.Msg) bool {
		t, ok := ticketOf(m, l.ops.subj.stored)
		if ok && t.key != q.key && t.place < q.place && (!found || t.place > best.place) {
			best, found = t, true
		}
		return true
	})
	return best, found, err
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
	return !now.Before(seen.Add(ticketLife(ttl)))
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

// errTooManyTickets: a listing of the queue matched more tickets than
// the server returns at once.
var errTooManyTickets = errors.New("natskvlease: too many tickets to list")

// lastPerSubject reads the last message of every subject of the bucket
// that matches filter (a direct get with multi_last, nats-server 2.11 and
// later), calling fn with each until fn returns false. No match is no
// error.
func (o *KVOps) lastPerSubject(ctx context.Context, filter string, fn func(*nats.Msg) bool) error {
	nc := o.js.Conn()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(multiLastRequest{MultiLast: []string{o.subj.stored + filter}}) // plain fields: cannot fail
	if err := nc.PublishRequest(o.subj.api+"DIRECT.GET."+o.subj.stream, inbox, req); err != nil {
		return err
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return err
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			if !fn(m) {
				return nil
			}
		case "204", "404": // the end of the batch; no match at all
			return nil
		case "413":
			return errTooManyTickets
		case "503":
			return nats.ErrNoResponders
		default:
			return fmt.Errorf("natskvlease: listing %s: status %s %s", filter, status, m.Header.Get("Description"))
		}
	}
}

// multiLastRequest asks a direct get for the last message of every
// subject that matches.
type multiLastRequest struct {
	MultiLast []string `json:"multi_last"`
}

// A holder does not watch the queue, and a release frees the key for
// the first waiter, who learns of it from its watch. Were the releaser
// to try again at once, it would write on its own release marker one
// round trip ahead of that waiter and win every time: waiters would
// starve behind a holder that unlocks and locks in a loop. So an
// acquisition on the marker of this lease's own release first lists the
// queue, and goes behind the waiters it finds: it reports the key taken,
// and AcquireWait takes a place at the back of the queue.
//
// That listing is a round trip, and uncontended relocks should stay one
// write. It is made only if the released holding was crowded: another
// write reached the bucket's stream between the holding's own writes
// (each revision is a stream sequence, so a gap shows it). A waiter that
// queued while the key was held wrote its ticket then, and a first
// waiter that loses the race for a vacancy writes its ticket again at
// once, so that the holding that beat it is crowded. A holder that
// relocks in a tight loop so gets the key back at most once more before
// the first waiter has it.

// releasedState is the latest release, for the acquisition after it.
type releasedState struct {
	rev     uint64 // the release's marker: the vacancy it made
	crowded bool   // other writes reached the stream during the holding
}

// noteRelease records a release's marker, and whether the holding it
// ended was crowded.
func (l *Lease) noteRelease(rev uint64, crowded bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.released = releasedState{rev: rev, crowded: crowded}
}

// yieldToQueue reports whether an acquisition about to write on the
// vacancy at rev should go behind queued waiters instead: rev is the
// marker of this lease's own release of a crowded holding, and another
// waiter's ticket is live. It answers once per release. A listing that
// fails lets the acquisition go ahead: the queue is about order, not
// safety.
func (l *Lease) yieldToQueue(ctx context.Context, rev uint64) bool {
	l.mu.Lock()
	r, own := l.released, l.ownTicket
	l.released = releasedState{}
	l.mu.Unlock()
	if !r.crowded || r.rev != rev || !l.canQueue() {
		return false
	}
	actx, cancel := context.WithTimeout(ctx, l.attemptTimeout())
	defer cancel()
	waiters := false
	err := l.ops.lastPerSubject(actx, queueFilter(l.cfg.Key), func(m *nats.Msg) bool {
		t, ok := ticketOf(m, l.ops.subj.stored)
		waiters = ok && t.key != own
		return !waiters
	})
	if err != nil {
		l.logger.Debug("natskvlease: cannot list the waiter queue; acquiring without it", "error", err)
	}
	return waiters
}
