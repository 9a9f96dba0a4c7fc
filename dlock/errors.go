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
	// ErrLocked is returned by TryLock when the key is held, by another
	// process or by another Lock of the same Client. The error is a
	// *LockedError naming that holder.
	ErrLocked = errors.New("lock is held")
	// ErrNotLocked is returned by Holder when nobody holds the key.
	ErrNotLocked = errors.New("lock is not held")
	// ErrLockLost is the cause of a Lock's Context when the lock was lost
	// (not renewed in time, or taken over after expiry), and is wrapped by
	// Unlock and Do when the lock had been lost.
	ErrLockLost = errors.New("lock lost")
)

// LockedError is returned by TryLock when the key is held. It wraps
// ErrLocked.
type LockedError struct {
	Key string
	// Holder is the holder found just after the attempt failed. It is the
	// zero HolderInfo if the key was released in between, or could not
	// be read.
	Holder HolderInfo
	// ByThisClient is true when the holder is a Lock of the Client that
	// called TryLock: locks are not reentrant, even within one Client.
	ByThisClient bool
}

func (e *LockedError) Error() string {
	h := e.Holder
	by := "by another owner"
	if e.ByThisClient {
		by = "by this client"
	}
	if h.Owner == "" {
		return fmt.Sprintf("dlock: %q: %v %s", e.Key, ErrLocked, by)
	}
	return fmt.Sprintf("dlock: %q: %v %s (owner %s on %s, pid %d, token %d)",
		e.Key, ErrLocked, by, h.Owner, h.Hostname, h.PID, h.Token)
}

// Unwrap lets errors.Is(err, ErrLocked) hold, and
// errors.Is(err, natskvlease.ErrLeaseExists) for code written against
// the lease package's sentinel.
func (e *LockedError) Unwrap() []error { return []error{ErrLocked, natskvlease.ErrLeaseExists} }
