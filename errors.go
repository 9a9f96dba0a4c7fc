package natskvlease

import (
	"errors"
	"fmt"
)

// Errors returned by this package. Test for them with errors.Is: most are
// wrapped with the key, bucket or field they concern, behind the prefix
// "natskvlease: " (dlock's errors begin "dlock: ", leadelect's
// "leadelect: ", each prefix once).
var (
	// ErrLeaseNotHeld is returned by Renew and Release when the lease is
	// not held by the caller (never acquired, already released, or lost).
	ErrLeaseNotHeld = errors.New("lease not held")
	// ErrLeaseLost is the cause (context.Cause of Lease.Context) of a
	// holding that ended without Release: the key was found taken over,
	// purged or expired, the safety deadline passed before a renewal was
	// answered, or the server refused a renewal. It is wrapped together
	// with what ended the holding.
	ErrLeaseLost = errors.New("lease lost")
	// ErrLeaseExists is kept for compatibility with the API this package
	// started from. No function of this package returns it on its own:
	// Acquire reports a key held by another as (false, nil). dlock's
	// *LockedError wraps it beside dlock.ErrLocked.
	ErrLeaseExists = errors.New("lease already exists")
	// ErrProviderClosed is returned by calls on a closed client.
	ErrProviderClosed = errors.New("provider is closed")
	// ErrProviderStopped is returned by LeaseManager.Start and Stop once
	// the manager has been stopped.
	ErrProviderStopped = errors.New("provider is stopped")
	// ErrNatsVersionNotSupported is returned when the NATS server is older
	// than MinNatsMajorVersion.MinNatsMinorVersion.0.
	ErrNatsVersionNotSupported = errors.New("NATS server version must be 2.11.0 or higher and JetStream must be enabled")

	// ErrInvalidConfig is wrapped by every configuration error: a bad
	// field of LeaseConfig, BucketConfig or RetryConfig, a nil KeyValue
	// or JetStream, an invalid key or bucket name.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrTTLNotSupported is returned at first use when the bucket cannot
	// expire the lease after exactly the TTL asked for: a TTL below one
	// second, above the bucket's MaxAge, or a bucket with neither MaxAge
	// nor per-message TTLs. The lease is never silently shortened.
	ErrTTLNotSupported = errors.New("lease TTL not supported by bucket")
	// ErrBucketMismatch is returned by GetOrCreateBucket when the bucket
	// exists with settings that differ from the ones asked for. The
	// bucket is never reconfigured silently.
	ErrBucketMismatch = errors.New("bucket exists with different settings")
	// ErrPermissionDenied is returned when the server refused a request
	// or write because the connection's user may not publish to its
	// subject (a "Permissions Violation"). Nothing was written. The
	// README's Permissions section lists what each role needs.
	ErrPermissionDenied = errors.New("permission denied by the NATS server")
	// ErrTopologyNotSupported is returned at first use for a bucket
	// leases cannot run on safely: a mirror, whose reads lag behind the
	// bucket it copies and whose writes go elsewhere, or a bucket with
	// sources, whose copied values replace keys without revision checks.
	ErrTopologyNotSupported = errors.New("bucket topology not supported for leases")
)

// ConfigError describes one invalid configuration field. It wraps
// ErrInvalidConfig.
type ConfigError struct {
	Field  string // the offending field, e.g. "LeaseConfig.TTL"
	Reason string // why it was refused
	// Package is the package whose field it is, and the prefix of the
	// message: "dlock", "leadelect"; empty means "natskvlease".
	Package string
}

// Error is "PACKAGE: invalid FIELD: REASON", the style of every error of
// this module: one prefix naming the package that reports it.
func (e *ConfigError) Error() string {
	pkg := e.Package
	if pkg == "" {
		pkg = "natskvlease"
	}
	return fmt.Sprintf("%s: invalid %s: %s", pkg, e.Field, e.Reason)
}

// Unwrap lets errors.Is(err, ErrInvalidConfig) hold.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func configError(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
