// Package leadelect is leader election on NATS JetStream KeyValue, in
// the style of client-go's leaderelection, built on the natskvlease
// lease: at most one candidate leads at a time, a leader that stops
// hands over within milliseconds, and one that dies is replaced within
// about one TTL.
//
// # Use
//
// Each candidate creates an Election with its own connection and calls
// Run, which campaigns until its context ends:
//
//	e, err := leadelect.New(js, leadelect.Config{Key: "scheduler", ID: hostname})
//	...
//	err = e.Run(ctx, leadelect.Callbacks{
//		OnStartedLeading: func(ctx context.Context) { schedule(ctx) }, // until ctx ends
//		OnNewLeader:      func(id string) { log.Println("leader:", id) },
//	})
//
// Anyone, candidate or not, can follow the election with Observe (a
// channel of changes) or Leader (one read); NewObserver gives an
// Observer that needs no ID and never writes.
//
// # Guarantees
//
//   - One leader at a time, as the candidates see it: IsLeader, and the
//     context given to OnStartedLeading, end no later than the lease's
//     safety deadline, which passes before the server lets anyone else
//     acquire the key. Each candidate stores its ID and a random nonce
//     per Election, so two candidates configured with the same ID are
//     still told apart.
//   - The key is held while OnStartedLeading runs: when a term ends by
//     Resign or by the end of Run's context, the key is released only
//     after OnStartedLeading has returned, so the next leader starts
//     after the last one's work has stopped (a lost lease cannot wait;
//     see below).
//   - Fencing tokens: every term has a token (TokenFromContext, Token,
//     LeaderInfo.Token), the key's revision when the term began. Tokens
//     of successive terms strictly increase. A leader paused longer than
//     its TTL (a stopped process, a long GC) cannot know it was replaced;
//     resources that refuse writes with a token smaller than one already
//     seen close that gap.
//   - Fast handoff: releases and expiries leave a marker on the key that
//     every waiting candidate's watch sees, so the next term starts one
//     write later. Resign and the end of Run's context release the key
//     (unless Config.KeepOnCancel); a crashed leader's key expires after
//     TTL.
//
// # Goroutines
//
// OnStartedLeading runs on a new goroutine per term; OnStoppedLeading
// on Run's goroutine; OnNewLeader on a goroutine Run starts for it.
// Run does not return before all of them have. Observe's channel is fed
// by a goroutine that ends with its context.
//
// # Buckets
//
// The bucket (Config.Bucket, "leadelect" by default) is created on first
// use with MaxAge equal to the TTL and expiry markers on. An existing
// bucket is used if it has expiry markers (LimitMarkerTTL) and a MaxAge
// of at least the TTL, so elections of different TTLs can share one
// bucket created for the longest. Memory storage, the default, loses
// the election's state when a single server restarts, which only costs
// one campaign.
package leadelect
