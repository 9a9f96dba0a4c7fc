package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// MinNatsMajorVersion is the minimum NATS server major version:
	// per-message TTLs and expiry markers arrived in 2.11.
	MinNatsMajorVersion = 2
	// MinNatsMinorVersion is the minimum NATS server minor version.
	MinNatsMinorVersion = 11
)

// ValidateNatsVersion reports whether the server nc is connected to is
// 2.11.0 or newer. An older server gives an error wrapping
// ErrNatsVersionNotSupported; a version that cannot be parsed (or no
// connection) gives a descriptive error that does not.
func ValidateNatsVersion(nc *nats.Conn) error {
	if nc == nil {
		return configError("nats.Conn", "is nil")
	}
	return checkServerVersion(nc.ConnectedServerVersion())
}

func checkServerVersion(version string) error {
	major, minor, err := parseVersion(version)
	if err != nil {
		return fmt.Errorf("natskvlease: cannot parse NATS server version %q: %w", version, err)
	}
	if major < MinNatsMajorVersion || (major == MinNatsMajorVersion && minor < MinNatsMinorVersion) {
		return fmt.Errorf("%w: server is %s", ErrNatsVersionNotSupported, version)
	}
	return nil
}

// parseVersion reads "MAJOR.MINOR.PATCH" with an optional "v" prefix and
// "-suffix" or "+build" tail.
func parseVersion(v string) (major, minor int, err error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return 0, 0, errors.New("want MAJOR.MINOR.PATCH")
	}
	nums := make([]int, 3)
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || (p[0] == '+' || p[0] == '-') {
			return 0, 0, fmt.Errorf("part %q is not a number", p)
		}
		nums[i] = n
	}
	return nums[0], nums[1], nil
}

// ValidateJetStreamEnabled checks that JetStream answers for the account
// behind js. On failure it logs one error line through logger (when not
// nil) and returns the error from JetStream, wrapped; errors.Is matches
// jetstream.ErrJetStreamNotEnabled or ErrJetStreamNotEnabledForAccount
// when that is the cause.
func ValidateJetStreamEnabled(ctx context.Context, js jetstream.JetStream, logger *slog.Logger) error {
	if js == nil {
		return configError("jetstream.JetStream", "is nil")
	}
	// Bounded: a request the server drops (no permission for it) would
	// otherwise wait for ctx.
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(actx); err != nil {
		err = permissionCause(js.Conn(), subjectsOf(js.Options(), "").api+"INFO", err)
		if logger != nil {
			logger.ErrorContext(ctx, "natskvlease: JetStream is not available for this account", "error", err)
		}
		return fmt.Errorf("natskvlease: JetStream not available: %w", err)
	}
	return nil
}

var (
	// The same rules nats.go applies, checked here so that a bad name is
	// refused before any round trip, with an error naming the field.
	validKeyRe    = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)
	validBucketRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

// maxBucketLen is the longest bucket name the server takes: a bucket's
// stream is "KV_" + name, and stream names are at most 255 bytes.
const maxBucketLen = 255 - len("KV_")

// ValidateKey reports whether key can name a lease: letters, digits and
// -/_=. with non-empty dot-separated tokens. The error is a *ConfigError
// wrapping ErrInvalidConfig.
func ValidateKey(key string) error { return validateKey("key", key) }

// ValidateBucket reports whether name can name a lease bucket: letters,
// digits, - and _, short enough for the server's stream names. The error
// is a *ConfigError wrapping ErrInvalidConfig.
func ValidateBucket(name string) error { return validateBucket("bucket", name) }

func validateKey(field, key string) error {
	switch {
	case key == "":
		return configError(field, "is empty")
	case key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, ".."):
		return configError(field, "%q: tokens separated by '.' must not be empty", key)
	case !validKeyRe.MatchString(key):
		return configError(field, "%q: only letters, digits and -/_=. are allowed", key)
	}
	return nil
}

func validateBucket(field, bucket string) error {
	switch {
	case bucket == "":
		return configError(field, "is empty")
	case len(bucket) > maxBucketLen:
		return configError(field, "is %d bytes long; the server allows at most %d", len(bucket), maxBucketLen)
	case !validBucketRe.MatchString(bucket):
		return configError(field, "%q: only letters, digits, - and _ are allowed", bucket)
	}
	return nil
}
