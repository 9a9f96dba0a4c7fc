package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/turnstile"
)

// DefaultBucketTTL is the MaxAge of buckets created without a TTL, and
// the lease TTL used when neither the lease nor the bucket sets one.
const DefaultBucketTTL = 10 * time.Second

// BucketConfig describes a KeyValue bucket for leases.
type BucketConfig struct {
	// Bucket is the bucket name: letters, digits, '-' and '_'.
	Bucket string
	// TTL is the bucket's MaxAge, the longest any lease in it can live.
	// Zero means DefaultBucketTTL.
	TTL time.Duration
	// Storage is ignored unless it is jetstream.MemoryStorage, the
	// default: the zero jetstream.StorageType is FileStorage, so it
	// cannot tell "file" from "unset". Set FileStorage to ask for file
	// storage.
	Storage jetstream.StorageType
	// FileStorage stores the bucket on disk, so that leases survive a
	// server restart. Memory storage, the default, loses every lease
	// when the server (or, on R1, its only replica) restarts.
	FileStorage bool
	// Compression enables S2 compression of stored values.
	Compression bool
	// Replicas is the number of stream replicas (1 to 5). Zero means 1.
	Replicas int
}

func (c BucketConfig) storage() jetstream.StorageType {
	if c.FileStorage {
		return jetstream.FileStorage
	}
	return jetstream.MemoryStorage
}

func (c BucketConfig) normalize() (BucketConfig, error) {
	if err := validateBucket("BucketConfig.Bucket", c.Bucket); err != nil {
		return c, err
	}
	switch {
	case c.TTL < 0:
		return c, configError("BucketConfig.TTL", "%v is negative", c.TTL)
	case c.TTL == 0:
		c.TTL = DefaultBucketTTL
	case c.TTL < time.Second:
		return c, configError("BucketConfig.TTL", "%v is below the server's one-second TTL resolution", c.TTL)
	}
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return c, configError("BucketConfig.Replicas", "%d is outside 1..5", c.Replicas)
	case c.Replicas == 0:
		c.Replicas = 1
	}
	return c, nil
}

// KVHelper opens and creates lease buckets.
type KVHelper struct {
	js     jetstream.JetStream
	logger *slog.Logger
}

// NewKVHelper returns a helper using js. A nil logger discards logs.
func NewKVHelper(js jetstream.JetStream, logger *slog.Logger) *KVHelper {
	return &KVHelper{js: js, logger: orDiscard(logger)}
}

// GetOrCreateBucket opens the bucket named in cfg, creating it if it does
// not exist, retrying transient errors.
//
// A new bucket has MaxAge = cfg.TTL, History 1, memory storage unless
// cfg.FileStorage is set, and LimitMarkerTTL = cfg.TTL, so that an
// expired lease leaves a marker that watchers see and leases can carry
// their own per-message TTL. An existing bucket whose MaxAge differs from
// cfg.TTL is refused with an error wrapping ErrBucketMismatch that names
// both; it is never reconfigured.
//
// The returned KeyValue is bound to the helper's JetStream (see
// BindJetStream), which leases need to publish per-message TTLs.
func (h *KVHelper) GetOrCreateBucket(ctx context.Context, cfg BucketConfig) (jetstream.KeyValue, error) {
	if h == nil || h.js == nil {
		return nil, configError("KVHelper", "has no JetStream (NewKVHelper was given nil)")
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if cfg.Storage == jetstream.MemoryStorage && cfg.FileStorage {
		return nil, configError("BucketConfig.Storage", "MemoryStorage contradicts FileStorage=true")
	}
	kv, err := Retry(ctx, func() (jetstream.KeyValue, error) { return h.openOrCreate(ctx, cfg) })
	if err != nil {
		return nil, err
	}
	return BindJetStream(kv, h.js), nil
}

func (h *KVHelper) openOrCreate(ctx context.Context, cfg BucketConfig) (jetstream.KeyValue, error) {
	kv, err := h.js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = h.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:         cfg.Bucket,
			TTL:            cfg.TTL,
			History:        1,
			Storage:        cfg.storage(),
			Replicas:       cfg.Replicas,
			Compression:    cfg.Compression,
			LimitMarkerTTL: cfg.TTL,
		})
		if err == nil {
			h.logger.DebugContext(ctx, "natskvlease: created bucket", "bucket", cfg.Bucket, "ttl", cfg.TTL, "replicas", cfg.Replicas)
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketExists) {
			return nil, h.bucketError(ctx, cfg.Bucket, err)
		}
		// Another process created it first, perhaps differently.
		kv, err = h.js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, h.bucketError(ctx, cfg.Bucket, err)
	}
	return kv, checkExisting(ctx, kv, cfg)
}

func checkExisting(ctx context.Context, kv jetstream.KeyValue, cfg BucketConfig) error {
	st, err := kv.Status(ctx)
	if err != nil {
		return err
	}
	if st.TTL() != cfg.TTL {
		return fmt.Errorf("%w: bucket %q has TTL (MaxAge) %v, asked for %v", ErrBucketMismatch, cfg.Bucket, st.TTL(), cfg.TTL)
	}
	return nil
}

// bucketError marks a request the server refused as a configuration error
// (a name it will not take, more replicas than it has), reports a server
// or account without JetStream as such, and leaves others as they are,
// so that Retry still sees transient ones.
func (h *KVHelper) bucketError(ctx context.Context, bucket string, err error) error {
	if errors.Is(err, nats.ErrNoResponders) {
		// Nobody answers the JetStream API: JetStream is off, or it is
		// starting. The account info request tells which, once.
		if _, aerr := h.js.AccountInfo(ctx); errors.Is(aerr, jetstream.ErrJetStreamNotEnabled) ||
			errors.Is(aerr, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("natskvlease: bucket %q: %w", bucket, aerr)
		}
		return err
	}
	var apiErr *jetstream.APIError
	refused := errors.As(err, &apiErr) && apiErr != nil && !isTransientAPIError(apiErr)
	if errors.Is(err, jetstream.ErrInvalidBucketName) || refused {
		return fmt.Errorf("%w: bucket %q refused: %w", ErrInvalidConfig, bucket, err)
	}
	return err
}

// BindJetStream returns kv together with the JetStream handle it was
// opened with. Leases need it to write per-message TTLs and to read from
// the stream leader; a KeyValue from KVHelper.GetOrCreateBucket is already
// bound. A lease on an unbound KeyValue falls back to the bucket's MaxAge
// as its TTL.
func BindJetStream(kv jetstream.KeyValue, js jetstream.JetStream) jetstream.KeyValue {
	if kv == nil || js == nil {
		return kv
	}
	if b, ok := kv.(*boundKV); ok {
		kv = b.KeyValue
	}
	return &boundKV{KeyValue: kv, js: js}
}

// boundKV is a KeyValue that remembers its JetStream handle, and its
// bucket's policy for a little while, so that many leases created at once
// on one bucket do not each ask the server for it.
type boundKV struct {
	jetstream.KeyValue
	js     jetstream.JetStream
	policy atomic.Pointer[cachedPolicy]
	turns  turnstile.Set // LeaseManagers waiting, per key
}

// turnsOf returns the turnstiles of a bound KeyValue, nil for another.
func turnsOf(kv jetstream.KeyValue) *turnstile.Set {
	if b, ok := kv.(*boundKV); ok {
		return &b.turns
	}
	return nil
}

type cachedPolicy struct {
	bucketPolicy
	readAt time.Time
}

// policyCacheFor is how long a bucket policy read is reused. Short: a
// bucket whose MaxAge is lowered must not keep new leases believing in
// the old one for long. (A lease reads the policy once, at its first
// operation.)
const policyCacheFor = 5 * time.Second

func jetStreamOf(kv jetstream.KeyValue) jetstream.JetStream {
	if b, ok := kv.(*boundKV); ok {
		return b.js
	}
	return nil
}

// bucketPolicy is what a lease needs to know of its bucket: how long keys
// may live and whether each write can carry its own TTL.
type bucketPolicy struct {
	maxAge      time.Duration
	msgTTL      bool // the bucket allows per-message TTLs and we can write them
	allowMsgTTL bool // the bucket allows per-message TTLs
	bound       bool // the KeyValue is bound to its JetStream (BindJetStream)
}

func readBucketPolicy(ctx context.Context, kv jetstream.KeyValue) (bucketPolicy, error) {
	b, bound := kv.(*boundKV)
	if bound {
		if c := b.policy.Load(); c != nil && time.Since(c.readAt) < policyCacheFor {
			return c.bucketPolicy, nil
		}
	}
	readAt := time.Now()
	p, err := fetchBucketPolicy(ctx, kv)
	if err == nil && bound {
		b.policy.Store(&cachedPolicy{bucketPolicy: p, readAt: readAt})
	}
	return p, err
}

func fetchBucketPolicy(ctx context.Context, kv jetstream.KeyValue) (bucketPolicy, error) {
	// Each attempt is bounded: a request lost in a leader change must be
	// retried, not waited on until the caller's context ends.
	st, err := Retry(ctx, func() (jetstream.KeyValueStatus, error) {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return kv.Status(actx)
	})
	if err != nil {
		return bucketPolicy{}, fmt.Errorf("natskvlease: reading bucket %q: %w", kv.Bucket(), err)
	}
	p := bucketPolicy{maxAge: st.TTL(), bound: jetStreamOf(kv) != nil}
	if s, ok := st.(*jetstream.KeyValueBucketStatus); ok && s.StreamInfo() != nil {
		cfg := s.StreamInfo().Config
		if err := checkTopology(kv.Bucket(), cfg); err != nil {
			return bucketPolicy{}, err
		}
		p.allowMsgTTL = cfg.AllowMsgTTL
		p.msgTTL = cfg.AllowMsgTTL && p.bound
	}
	return p, nil
}

// checkTopology refuses the buckets leases cannot run on safely.
func checkTopology(bucket string, cfg jetstream.StreamConfig) error {
	switch {
	case cfg.Mirror != nil:
		return fmt.Errorf("%w: bucket %q is a mirror of %q: its reads lag behind and its writes go to the origin; open the origin bucket (through its domain with jetstream.NewWithDomain if it lives elsewhere)",
			ErrTopologyNotSupported, bucket, strings.TrimPrefix(cfg.Mirror.Name, "KV_"))
	case len(cfg.Sources) > 0:
		return fmt.Errorf("%w: bucket %q has sources: values copied from them replace keys without revision checks; use a bucket without sources for leases",
			ErrTopologyNotSupported, bucket)
	}
	return nil
}

// leaseTTL decides the TTL a lease writes (sent) and the TTL the server
// will actually apply to it (effective), or refuses the requested TTL.
// The server truncates per-message TTLs to whole seconds and caps them at
// MaxAge, so sent is rounded up and effective is never more than what the
// server enforces: a client must never believe its lease lives longer
// than the server keeps it.
func (p bucketPolicy) leaseTTL(bucket string, requested time.Duration) (sent, effective time.Duration, err error) {
	if !p.msgTTL {
		return p.maxAgeOnly(bucket, requested)
	}
	if requested == 0 {
		requested = DefaultBucketTTL
		if p.maxAge > 0 {
			requested = p.maxAge
		}
	}
	if requested < time.Second {
		return 0, 0, fmt.Errorf("%w: TTL %v is below the server's 1s minimum for per-message TTLs (bucket %q)", ErrTTLNotSupported, requested, bucket)
	}
	if p.maxAge > 0 && requested > p.maxAge {
		return 0, 0, fmt.Errorf("%w: TTL %v exceeds bucket %q MaxAge %v, which would expire the lease early; set LeaseConfig.TTL to at most %v, or use a bucket without MaxAge (KVHelper.OpenLeaseBucket creates one)",
			ErrTTLNotSupported, requested, bucket, p.maxAge, p.maxAge)
	}
	sent = requested.Truncate(time.Second)
	if sent < requested {
		sent += time.Second
	}
	effective = sent
	if p.maxAge > 0 && p.maxAge < effective {
		effective = p.maxAge
	}
	return sent, effective, nil
}

// maxAgeOnly: without per-message TTLs every revision lives exactly
// MaxAge. A lease may still have a shorter TTL of its own: it renews and
// believes by it (its safety deadline is its own TTL less a tenth, which
// comes before MaxAge), while the server expires a dead holder's key
// only after MaxAge. effective is the lease's TTL; the server's is
// MaxAge.
func (p bucketPolicy) maxAgeOnly(bucket string, requested time.Duration) (sent, effective time.Duration, err error) {
	if p.maxAge <= 0 {
		return 0, 0, fmt.Errorf("%w: bucket %q has no MaxAge and %s, so nothing would ever expire a dead holder's key; %s",
			ErrTTLNotSupported, bucket, p.whyNoMsgTTL(), p.fix())
	}
	if requested == 0 {
		return 0, p.maxAge, nil
	}
	if requested < time.Second {
		return 0, 0, fmt.Errorf("%w: TTL %v is below the server's 1s resolution (bucket %q)", ErrTTLNotSupported, requested, bucket)
	}
	if requested > p.maxAge {
		return 0, 0, fmt.Errorf("%w: TTL %v exceeds bucket %q MaxAge %v, which would expire the lease early; set LeaseConfig.TTL to at most %v, or use a bucket with a larger MaxAge (or none, with per-message TTLs: KVHelper.OpenLeaseBucket)",
			ErrTTLNotSupported, requested, bucket, p.maxAge, p.maxAge)
	}
	return 0, requested, nil
}

func (p bucketPolicy) whyNoMsgTTL() string {
	if p.allowMsgTTL {
		return "the KeyValue is not bound to its JetStream, so writes carry no per-message TTL"
	}
	return "no per-message TTLs"
}

// fix names what makes a bucket without usable per-message TTLs expire
// leases after their own TTL.
func (p bucketPolicy) fix() string {
	if p.allowMsgTTL && !p.bound {
		return "wrap the KeyValue with natskvlease.BindJetStream(kv, js), or open it with KVHelper.GetOrCreateBucket"
	}
	return "create the bucket with KVHelper.GetOrCreateBucket or KVHelper.OpenLeaseBucket (per-message TTLs and expiry markers), and open it through them or BindJetStream"
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
