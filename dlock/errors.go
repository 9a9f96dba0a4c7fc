package dlock

import (
	"errors"
	"fmt"

	"github.com/natskvlease/natskvlease"
)

// Errors returned by this package, in addition to the natskvlease
// sentinels (natskvlease.ErrInvalidConfig for bad inputs,
// natskvlease.ErrProviderClosed for calls on a closed Client). Test for
// them with errors.Is: they are wrapped with the key they concern.
var (
	// ErrLocked is returned by TryLock when another holder has the key.
	// The error is a *LockedError naming that holder.
	ErrLocked = errors.New("lock is held by another owner")
	// ErrNotLocked is returned by Holder when nobody holds the key.
	ErrNotLocked = errors.New("lock is not held")
	// ErrLockLost is the cause of a Lock's Context when the lock was lost
	// (not renewed in time, or taken over after expiry), and is wrapped by
	// Unlock and Do when the lock had been lost.
	ErrLockLost = errors.New("lock lost")
)

// LockedError is returned by TryLock when the key is held by someone
// else. It wraps ErrLocked.
type LockedError struct {
	Key string
	// Holder is the holder found just after the attempt failed. It is the
	// zero HolderInfo if the key was released in between, or could not
	// be read.
	Holder HolderInfo
}

func (e *LockedError) Error() string {
	h := e.Holder
	if h.Owner == "" {
		return fmt.Sprintf("dlock: %q: %v", e.Key, ErrLocked)
	}
	return fmt.Sprintf("dlock: %q: %v (owner %s on %s, pid %d, token %d)",
		e.Key, ErrLocked, h.Owner, h.Hostname, h.PID, h.Token)
}

// Unwrap lets errors.Is(err, ErrLocked) hold, and
// errors.Is(err, natskvlease.ErrLeaseExists) for code written against
// the lease package's sentinel.
func (e *LockedError) Unwrap() []error { return []error{ErrLocked, natskvlease.ErrLeaseExists} }
