// Package dlock is a distributed lock on NATS JetStream KeyValue, built
// on the natskvlease lease.
//
//	locks, err := dlock.New(ctx, js, dlock.WithTTL(10*time.Second))
//	...
//	defer locks.Close(ctx)
//	err = locks.Do(ctx, "reports.daily", func(ctx context.Context, token uint64) error {
//		return writeReport(ctx, token) // stop when ctx ends; pass token on
//	})
//
// Lock waits for a key (woken by the key's watch, so a released lock is
// handed over in milliseconds), TryLock makes one attempt and names the
// current holder when it fails, and Do runs a function under the lock.
// A held Lock renews itself in the background every TTL/3 until Unlock.
// Holder tells operators who holds a key, since when, and for how long
// without renewal.
//
// # Guarantee
//
// At most one Lock on a key is live at a time, where live means its
// Context has not been cancelled. A holder that stops renewing (crash,
// pause, lost connection, partition) loses the lock: its Context is
// cancelled and Lost is closed at the lease's safety deadline, a tenth of
// the TTL before the key can expire on the server, and so before anyone
// else can take it. Others take the key as soon as the server expires it
// (at most TTL after the last renewal) or the holder unlocks it.
//
// # Limits
//
// The guarantee holds for the lock's view of time: it assumes the
// client's and server's clocks run at nearly the same rate (drift well
// under 10%), and it cannot stop work already in progress when the
// Context is cancelled, or a process paused between checking its Context
// and touching a resource. Use the fencing token: Token is the key's
// revision at acquisition, and tokens of successive holdings only grow,
// so a resource that remembers the largest token it has seen and refuses
// smaller ones is safe even against a paused holder.
//
// Locks in a bucket with memory storage (the default) vanish when a
// single-replica server restarts; use WithFileStorage or WithReplicas
// for locks that must survive that. All clients sharing locks must use
// the same bucket and TTL.
//
// The value stored under a held key is JSON: {"owner": a random nonce
// unique to the holding, "hostname", "pid", and after the first renewal
// "acquired_at" and "token"}.
package dlock
