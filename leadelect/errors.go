package leadelect

import "errors"

// Errors returned by this package. Configuration errors wrap
// natskvlease.ErrInvalidConfig (as a *natskvlease.ConfigError naming the
// field); bucket errors wrap natskvlease.ErrBucketMismatch or
// natskvlease.ErrTTLNotSupported. Test with errors.Is.
var (
	// ErrNoLeader is returned by Leader when the election's key is
	// vacant: no candidate leads right now.
	ErrNoLeader = errors.New("leadelect: no leader")
	// ErrNotLeader is returned by Resign when this Election does not
	// lead. It is harmless.
	ErrNotLeader = errors.New("leadelect: not the leader")
	// ErrRunning is returned by Run while another Run of the same
	// Election is in progress.
	ErrRunning = errors.New("leadelect: Run already in progress")
	// ErrNotIdentity is returned by Leader when the key holds a value
	// that no Election wrote.
	ErrNotIdentity = errors.New("leadelect: key holds a value that is not an election identity")
)
