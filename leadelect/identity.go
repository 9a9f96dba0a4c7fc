package leadelect

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaderInfo describes one state of an election: a leader's term, or a
// vacancy (ID empty).
type LeaderInfo struct {
	// ID is the leader's configured ID; empty when the key is vacant.
	ID string
	// Nonce is random per Election instance: it tells apart candidates
	// configured with the same ID.
	Nonce string
	// Token is the fencing token of the leader's term: the key's revision
	// at which the term began. Tokens of successive terms strictly
	// increase. Zero when vacant.
	Token uint64
	// Since is when the term began, by the leader's clock (by the server's
	// for an observer that sees only the term's first write). Zero when
	// vacant.
	Since time.Time
	// Revision is the key's revision this state was read from: the
	// latest renewal, or the delete or expiry marker of a vacancy. Zero
	// when the key has never been written.
	Revision uint64
}

// Vacant reports whether no one leads in this state.
func (i LeaderInfo) Vacant() bool { return i.ID == "" }

// sameTerm reports whether a and b describe the same state: both vacant,
// or the same holder's same term. Renewals do not change it.
func (i LeaderInfo) sameTerm(o LeaderInfo) bool {
	return i.ID == o.ID && i.Nonce == o.Nonce && i.Token == o.Token
}

// identity is the value stored under the election's key.
type identity struct {
	ID    string `json:"id"`
	Nonce string `json:"nonce"`
	// Since is set from the term's first renewal on; until then the
	// write's own timestamp is the term's start.
	Since time.Time `json:"since,omitzero"`
	// Token is 0 in the write that begins a term, whose revision is the
	// token; renewals carry it.
	Token uint64 `json:"token,omitempty"`
}

func (id identity) encode() []byte {
	b, err := json.Marshal(id)
	if err != nil { // only a time outside years 0-9999 can fail
		id.Since = time.Time{}
		b, _ = json.Marshal(id)
	}
	return b
}

func decodeIdentity(b []byte) (identity, error) {
	var id identity
	if err := json.Unmarshal(b, &id); err != nil {
		return id, fmt.Errorf("%w: %w", ErrNotIdentity, err)
	}
	if id.ID == "" || id.Nonce == "" {
		return id, fmt.Errorf("%w: id or nonce missing", ErrNotIdentity)
	}
	return id, nil
}

// infoOf turns a watched or read entry into the state it records.
func infoOf(e jetstream.KeyValueEntry) (LeaderInfo, error) {
	if e.Operation() != jetstream.KeyValuePut {
		return LeaderInfo{Revision: e.Revision()}, nil
	}
	id, err := decodeIdentity(e.Value())
	if err != nil {
		return LeaderInfo{}, err
	}
	info := LeaderInfo{ID: id.ID, Nonce: id.Nonce, Token: id.Token, Since: id.Since, Revision: e.Revision()}
	if info.Token == 0 {
		info.Token = e.Revision()
	}
	if info.Since.IsZero() {
		info.Since = e.Created()
	}
	return info, nil
}
