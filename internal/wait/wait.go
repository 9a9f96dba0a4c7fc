// Package wait holds the one context-aware sleep that the lease and the
// packages built on it use between retries.
package wait

import (
	"context"
	"time"
)

// Sleep waits for d and reports true, or reports false at once if ctx
// would end before d has passed (so that no caller sleeps past its
// deadline only to find its context done), or as soon as ctx ends.
func Sleep(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
