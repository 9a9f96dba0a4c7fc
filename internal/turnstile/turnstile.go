// Package turnstile lets callers in one process take turns per key: one
// at a time holds a key's turn, the others wait, first come first served.
// natskvlease and dlock use it so that a crowd of waiters for one lease
// in one process keeps one of them waiting on the server.
package turnstile

import (
	"context"
	"sync"
)

// Set is a turnstile per key. The zero value is ready to use.
type Set struct {
	mu    sync.Mutex
	gates map[string]*gate
}

type gate struct {
	slot  chan struct{} // holds a token while a caller has the turn
	users int           // callers holding or waiting; the gate goes at 0
}

// Wait blocks until the caller has key's turn or ctx ends, and returns
// the function that passes the turn on (call it exactly once).
func (s *Set) Wait(ctx context.Context, key string) (pass func(), err error) {
	s.mu.Lock()
	if s.gates == nil {
		s.gates = make(map[string]*gate)
	}
	g := s.gates[key]
	if g == nil {
		g = &gate{slot: make(chan struct{}, 1)}
		s.gates[key] = g
	}
	g.users++
	s.mu.Unlock()
	select {
	case g.slot <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-g.slot; s.leave(key, g) }) }, nil
	case <-ctx.Done():
		s.leave(key, g)
		return nil, ctx.Err()
	}
}

func (s *Set) leave(key string, g *gate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.users--; g.users == 0 {
		delete(s.gates, key)
	}
}

// Len returns the number of keys with a caller holding or waiting.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gates)
}
