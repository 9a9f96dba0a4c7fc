// Package natskvlease provides leases on NATS JetStream KeyValue: one
// holder at a time per key, renewed in the background, expired by the
// server when the holder dies, and handed over through the key's watch
// within milliseconds. It is the base of the dlock (distributed lock) and
// leadelect (leader election) packages in this module.
//
// # Guarantees
//
//   - One holder at a time, as the holders see it: a Lease reports
//     IsHeld only until its safety deadline, the time its last successful
//     acquire or renew was sent plus the TTL the server applies, less a
//     tenth. The server removes the key once the TTL has passed since it
//     stored that write, so a holder stops believing it holds before
//     anyone else can acquire. Pausing the process, losing the connection
//     or a hung request cannot stretch this: IsHeld reads the clock.
//   - Fencing tokens: Token is the revision at which a holding began.
//     Revisions are the stream's sequence, so tokens of successive
//     holdings only grow. Pass the token to the resources you protect and
//     have them refuse smaller ones; that closes the gap a paused holder
//     leaves, which no lease can.
//   - Expiry by the server: every acquire and renew carries a per-message
//     TTL (buckets from KVHelper have LimitMarkerTTL set), so a dead
//     holder's key expires on the server with no client clock involved,
//     and watchers see the expiry marker at once.
//   - One round trip per operation: renew is one revision-checked write
//     on the revision held, release one revision-checked purge, acquire
//     on a key known to be free one write.
//   - Faults are resolved, not guessed: a write whose answer was lost is
//     resolved by reading the key from the stream leader, and a conflict
//     reported while the revision is unchanged (replicated streams do
//     this) is retried. Transient errors are retried until the safety
//     deadline, then the lease is lost.
//   - Handoff through the watch: a waiter (AcquireWait, LeaseManager)
//     acts on the key's delete or expiry marker the moment its watch
//     delivers it, with one write on the marker's revision. When one
//     release wakes many waiters, the losers learn of the winner from
//     the same watch rather than by reading the key.
//
// # Limits
//
// The safety deadline assumes the client's and the server's clocks run
// at nearly the same rate (drift well under 10%); they need not agree on
// the time. A bucket in memory storage loses every lease when its server
// (with one replica) restarts; tokens still never go backwards in a
// running stream, but a recreated stream starts its sequence again. File
// storage syncs to disk every two minutes by default, so a crash of every
// replica can lose acknowledged writes. Values must be unique per holder:
// two leases with the same Value are taken for one holder.
//
// # Which type to use
//
// Lease is the building block: Acquire, Renew and Release by hand, or
// KeepAlive to renew a holding in the background (on a timer, with no
// goroutine per lease while it waits, so a process can hold thousands);
// RunCamping is Acquire then KeepAlive. AcquireWait blocks until the
// lease is free and acquired. Context (and Done) end the moment a
// holding ends: derive the context of work done under the lease from it.
// LeaseManager campaigns for ever: it acquires whenever the key is free,
// which suits a leader role. dlock and leadelect are built the same way,
// from AcquireWait, KeepAlive and Context. Create buckets with
// KVHelper.GetOrCreateBucket.
package natskvlease
