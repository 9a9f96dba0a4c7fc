package natskvlease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KVOps wraps a KeyValue with retries of transient errors. Its writes
// resolve timeouts: when a retried write conflicts after an earlier
// attempt timed out, the key is read back and the earlier attempt's
// result adopted if the stored value is the one written. That is exact
// only when values are unique per writer.
type KVOps struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream // nil unless kv is bound (BindJetStream)
	logger *slog.Logger
	retry  RetryConfig
	// noRetry turns off nats.go's retry on "no responders": it would hide
	// time from the lease's deadline, and the lease retries itself.
	noRetry jetstream.PublishOpt
	subj    kvSubjects // set when js is
}

// NewKVOps returns operations on kv. A nil logger discards logs.
func NewKVOps(kv jetstream.KeyValue, logger *slog.Logger) *KVOps {
	o := &KVOps{kv: kv, js: jetStreamOf(kv), logger: orDiscard(logger), retry: DefaultRetryConfig(),
		noRetry: jetstream.WithRetryAttempts(0)}
	if o.js != nil {
		o.subj = subjectsOf(o.js.Options(), kv.Bucket())
	}
	return o
}

// kvSubjects are the subjects a bound KeyValue's writes and leader reads
// use, built as nats.go builds them for the same KeyValue (jetstream
// kv.go, mapStreamToKVS and Put): a JetStream reached through a domain or
// a custom API prefix gets its writes under that prefix, which the server
// (domain) or the account's imports (API prefix) map back to the
// stream's own subjects. A mirror's put prefix is not needed: leases
// refuse mirrors and buckets with sources (see checkTopology).
type kvSubjects struct {
	put    string // writes go to put + key
	stored string // the stream's own subjects: stored + key ($KV.<bucket>.)
	api    string // JetStream API prefix, ending in '.'
	stream string // KV_<bucket>
}

func subjectsOf(opts jetstream.JetStreamOptions, bucket string) kvSubjects {
	api := jetstream.DefaultAPIPrefix
	switch {
	case opts.Domain != "":
		api = "$JS." + opts.Domain + ".API."
	case opts.APIPrefix != "":
		// NewWithAPIPrefix keeps the prefix as given and adds the dot
		// only to the one it uses.
		api = strings.TrimSuffix(opts.APIPrefix, ".") + "."
	}
	s := kvSubjects{stored: "$KV." + bucket + ".", api: api, stream: "KV_" + bucket}
	s.put = s.stored
	if api != jetstream.DefaultAPIPrefix { // nats.go's useJSPfx
		s.put = api + s.stored
	}
	return s
}

// KV returns the underlying KeyValue.
func (o *KVOps) KV() jetstream.KeyValue { return o.kv }

func (o *KVOps) check(key string) error {
	if o == nil || o.kv == nil {
		return configError("KeyValue", "is nil")
	}
	return validateKey("key", key)
}

// Create writes value under key if the key does not exist or was
// deleted, and returns the new revision. A key that exists gives an error
// wrapping jetstream.ErrKeyExists.
func (o *KVOps) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := o.check(key); err != nil {
		return 0, err
	}
	return o.casWrite(ctx, key, value, 0, func() (uint64, error) { return o.kv.Create(ctx, key, value) })
}

// Update writes value under key if the key's latest revision is revision,
// and returns the new revision. A mismatch gives an error wrapping
// jetstream.ErrKeyRevisionMismatch.
func (o *KVOps) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	if err := o.check(key); err != nil {
		return 0, err
	}
	return o.casWrite(ctx, key, value, revision, func() (uint64, error) { return o.kv.Update(ctx, key, value, revision) })
}

func (o *KVOps) casWrite(ctx context.Context, key string, value []byte, after uint64, write func() (uint64, error)) (uint64, error) {
	ambiguous := false
	rev, err := RetryWithConfig(ctx, func() (uint64, error) {
		rev, err := write()
		ambiguous = ambiguous || IsTransient(err)
		return rev, err
	}, o.retry)
	if err != nil && ambiguous && isRevisionMismatch(err) {
		if e, gerr := o.kv.Get(ctx, key); gerr == nil && e.Revision() > after && bytes.Equal(e.Value(), value) {
			o.logger.DebugContext(ctx, "natskvlease: adopted a timed-out write", "key", key, "revision", e.Revision())
			return e.Revision(), nil
		}
	}
	return rev, err
}

// Delete places a delete marker on key, whatever its revision.
func (o *KVOps) Delete(ctx context.Context, key string) error {
	if err := o.check(key); err != nil {
		return err
	}
	_, err := Retry(ctx, func() (struct{}, error) { return struct{}{}, o.kv.Delete(ctx, key) })
	return err
}

// DeleteWithRevision places a delete marker on key only if its latest
// revision is revision. A mismatch gives an error wrapping
// jetstream.ErrKeyRevisionMismatch, unless an earlier attempt that timed
// out turns out to have deleted the key.
func (o *KVOps) DeleteWithRevision(ctx context.Context, key string, revision uint64) error {
	if err := o.check(key); err != nil {
		return err
	}
	ambiguous := false
	_, err := RetryWithConfig(ctx, func() (struct{}, error) {
		err := o.kv.Delete(ctx, key, jetstream.LastRevision(revision))
		ambiguous = ambiguous || IsTransient(err)
		return struct{}{}, err
	}, o.retry)
	if err != nil && ambiguous && isRevisionMismatch(err) {
		if _, gerr := o.kv.Get(ctx, key); errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return nil
		}
	}
	return err
}

// Get returns key's latest entry; a deleted or expired key gives
// jetstream.ErrKeyNotFound.
func (o *KVOps) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if err := o.check(key); err != nil {
		return nil, err
	}
	return Retry(ctx, func() (jetstream.KeyValueEntry, error) { return o.kv.Get(ctx, key) })
}

// Watch watches key: the latest entry first (delete and expiry markers
// included), then every change. Stop the watcher or end ctx to release it.
func (o *KVOps) Watch(ctx context.Context, key string) (jetstream.KeyWatcher, error) {
	if err := o.check(key); err != nil {
		return nil, err
	}
	return Retry(ctx, func() (jetstream.KeyWatcher, error) { return o.kv.Watch(ctx, key) })
}

// The single-attempt operations below are what a Lease is made of. They
// do not retry: the lease decides, with its deadline in hand, whether and
// how to retry.

// snapshot is the latest state of a key as far as a lease cares.
type snapshot struct {
	rev    uint64 // revision of the latest entry; 0 if none (or unknown, see revKnown)
	value  []byte
	vacant bool // no live holder: no entry, or a delete, purge or expiry marker
	// deleted is set when the vacancy is a KV DEL marker (or a marker the
	// watch reports as a delete). The server expires such a marker with a
	// rollup of the subject, which would also wipe a write placed on it
	// just before (see README, "Why every write is safe"): a lease purges
	// it before writing on it.
	deleted bool
	// revKnown is false when the key is vacant but the marker's revision
	// could not be learned (an unbound KeyValue's purge hides it).
	revKnown bool
}

func snapshotOf(e jetstream.KeyValueEntry) snapshot {
	op := e.Operation()
	return snapshot{
		rev:      e.Revision(),
		value:    e.Value(),
		vacant:   op != jetstream.KeyValuePut,
		deleted:  op == jetstream.KeyValueDelete,
		revKnown: true,
	}
}

// write stores value under key if key's latest revision is expected
// (0: no entry at all), with a per-message TTL when ttl > 0. One round
// trip.
func (o *KVOps) write(ctx context.Context, key string, value []byte, expected uint64, ttl time.Duration) (uint64, error) {
	if o.js == nil {
		return o.kv.Update(ctx, key, value, expected)
	}
	// The headers are set here rather than through publish options, which
	// would allocate a closure each per call.
	m := &nats.Msg{Subject: o.subject(key), Data: value, Header: nats.Header{}}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expected, 10))
	if ttl > 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttl.String())
	}
	ack, err := o.js.PublishMsg(ctx, m, o.noRetry)
	if err != nil {
		return 0, permissionCause(o.js.Conn(), m.Subject, err)
	}
	return ack.Sequence, nil
}

// purge places a KV PURGE marker (a rollup of the key's subject) on key
// if its latest revision is expected, with a per-message TTL when ttl >
// 0, and returns the marker's revision (0 when the KeyValue is unbound
// and cannot tell). One round trip.
//
// A lease vacates a key with PURGE, never DEL: when a PURGE marker
// expires the server deletes that one message, so a write placed on the
// marker survives; a DEL marker's expiry is a rollup that would wipe it.
func (o *KVOps) purge(ctx context.Context, key string, expected uint64, ttl time.Duration) (uint64, error) {
	return o.purgeNoting(ctx, key, expected, ttl, nil)
}

// purgeNoting is purge with a note in the marker's body, for watchers.
func (o *KVOps) purgeNoting(ctx context.Context, key string, expected uint64, ttl time.Duration, note []byte) (uint64, error) {
	if o.js == nil {
		if expected == 0 {
			// nats.go sends no revision check for revision 0: the purge
			// would remove whatever is there.
			return 0, fmt.Errorf("natskvlease: an unbound KeyValue cannot purge %q only if it is empty", key)
		}
		return 0, o.kv.Purge(ctx, key, jetstream.LastRevision(expected))
	}
	m := &nats.Msg{Subject: o.subject(key), Header: nats.Header{}, Data: note}
	m.Header.Set(kvOperationHeader, kvOperationPurge)
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expected, 10))
	if ttl > 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttl.String())
	}
	ack, err := o.js.PublishMsg(ctx, m, o.noRetry)
	if err != nil {
		return 0, permissionCause(o.js.Conn(), m.Subject, err)
	}
	return ack.Sequence, nil
}

const (
	kvOperationHeader = "KV-Operation"
	kvOperationPurge  = "PURGE"
)

// subject is where writes on key are published.
func (o *KVOps) subject(key string) string { return o.subj.put + key }

// latest reads key's latest entry, markers included. With a bound
// KeyValue the read is answered by the stream leader, which has every
// acknowledged write; a direct get (kv.Get) may be answered by a replica
// that lags behind.
func (o *KVOps) latest(ctx context.Context, key string) (snapshot, error) {
	if o.js == nil {
		e, err := o.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// A marker, or nothing: Get hides which, and the marker's
			// revision. The first entry of a watch shows both.
			return o.latestByWatch(ctx, key)
		}
		if err != nil {
			return snapshot{}, err
		}
		return snapshotOf(e), nil
	}
	return o.leaderGet(ctx, key)
}

// latestByWatch reads key's latest entry, markers included, as the first
// entry of a watch: the slow way, for a KeyValue with no JetStream handle
// to ask the stream leader.
func (o *KVOps) latestByWatch(ctx context.Context, key string) (snapshot, error) {
	w, err := o.kv.Watch(ctx, key)
	if err != nil {
		return snapshot{}, err
	}
	defer func() { _ = w.Stop() }()
	select {
	case e, ok := <-w.Updates():
		switch {
		case !ok:
			return snapshot{}, errors.New("natskvlease: watch ended before its first entry")
		case e == nil: // no entry at all
			return snapshot{vacant: true, revKnown: true}, nil
		}
		return snapshotOf(e), nil
	case <-ctx.Done():
		return snapshot{}, ctx.Err()
	}
}

type storedMsg struct {
	Subject  string `json:"subject"`
	Sequence uint64 `json:"seq"`
	Header   []byte `json:"hdrs,omitempty"`
	Data     []byte `json:"data,omitempty"`
}

type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *storedMsg          `json:"message,omitempty"`
}

func (o *KVOps) leaderGet(ctx context.Context, key string) (snapshot, error) {
	// The filter is the stream's own subject, whatever prefix writes go
	// through; the request goes to the stream's JetStream API.
	req, err := json.Marshal(map[string]string{"last_by_subj": o.subj.stored + key})
	if err != nil {
		return snapshot{}, err
	}
	subj := o.subj.api + "STREAM.MSG.GET." + o.subj.stream
	msg, err := o.js.Conn().RequestWithContext(ctx, subj, req)
	if err != nil {
		return snapshot{}, permissionCause(o.js.Conn(), subj, err)
	}
	var resp msgGetResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return snapshot{}, fmt.Errorf("natskvlease: bad message-get response: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return snapshot{vacant: true, revKnown: true}, nil
		}
		return snapshot{}, resp.Error
	}
	if resp.Message == nil {
		return snapshot{}, errors.New("natskvlease: empty message-get response")
	}
	s := snapshot{rev: resp.Message.Sequence, value: resp.Message.Data, revKnown: true}
	if len(resp.Message.Header) > 0 {
		hdr, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return snapshot{}, fmt.Errorf("natskvlease: bad stored headers: %w", err)
		}
		s.vacant = isMarker(hdr)
		s.deleted = s.vacant && !isSubjectDeleteMarker(hdr)
	}
	return s, nil
}

// isMarker reports a delete or purge (KV-Operation) or a server-written
// expiry marker (Nats-Marker-Reason).
func isMarker(h nats.Header) bool {
	return h.Get(kvOperationHeader) != "" || h.Get(jetstream.MarkerReasonHeader) != ""
}

// isSubjectDeleteMarker reports a message whose expiry the server handles
// by deleting that message alone, as nats-server 2.15.2 decides it
// (server/sdm.go, isSubjectDeleteMarker): a server marker or a KV PURGE.
// The expiry of any other last message of a subject is a rollup.
func isSubjectDeleteMarker(h nats.Header) bool {
	return h.Get(jetstream.MarkerReasonHeader) != "" || h.Get(kvOperationHeader) == kvOperationPurge
}

// permissionCause tells a request the server dropped for lack of
// permission from one that was lost: nats-server answers a publish to a
// subject the user may not publish to with an asynchronous
// "Permissions Violation" error and never delivers it, so the request
// times out. When the connection's last error is that violation for
// subject, the timeout is replaced by an error wrapping
// ErrPermissionDenied, which is final: nothing was written.
func permissionCause(nc *nats.Conn, subject string, err error) error {
	if nc == nil || err == nil || !IsTransient(err) {
		return err
	}
	last := nc.LastError()
	if last == nil || !errors.Is(last, nats.ErrPermissionViolation) || !strings.Contains(last.Error(), `"`+subject+`"`) {
		return err
	}
	return fmt.Errorf("%w: the server refused %q to this connection's user (%v); see the README's Permissions section", ErrPermissionDenied, subject, last)
}

// errTooManyToList: a listing matched more subjects than
// the server returns at once.
var errTooManyToList = errors.New("natskvlease: more subjects match than one listing returns")

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
			return errTooManyToList
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
