package leadelect

import (
	"slices"
	"testing"
	"time"
)

func TestOfferKeepsLatestInOrder(t *testing.T) {
	ch := make(chan int, 3)
	for i := range 10 {
		offer(ch, i)
	}
	close(ch)
	var got []int
	for v := range ch {
		got = append(got, v)
	}
	if !slices.Equal(got, []int{7, 8, 9}) {
		t.Fatalf("got %v, want the three latest in order", got)
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{Key: "k", ID: "me"}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if c.Bucket != DefaultBucket || c.TTL != DefaultTTL || c.RenewRatio != DefaultRenewRatio || c.Replicas != 1 || c.Logger == nil || c.KeepOnCancel {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if _, err := (Config{Key: "k", ID: "me", TTL: 1500 * time.Millisecond}).normalize(); err != nil {
		t.Fatalf("1.5s TTL: %v", err)
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	id, err := decodeIdentity(identity{ID: "a", Nonce: "n", Since: since, Token: 7}.encode())
	if err != nil || id.ID != "a" || id.Nonce != "n" || !id.Since.Equal(since) || id.Token != 7 {
		t.Fatalf("round trip: %+v, %v", id, err)
	}
	for _, bad := range []string{"", "{}", `{"id":"a"}`, `{"nonce":"n"}`, "x"} {
		if _, err := decodeIdentity([]byte(bad)); err == nil {
			t.Errorf("decodeIdentity(%q) accepted", bad)
		}
	}
}

// TestOtherLed: after resigning its term (token 10, release marker 14),
// a candidate waits until the watch shows that another has led since,
// even when a lagging watch skipped the other's write and the self's
// marker (History 1 keeps only the latest revision).
func TestOtherLed(t *testing.T) {
	const token, released = 10, 14
	leader := func(rev uint64, nonce string) LeaderInfo {
		return LeaderInfo{ID: "x", Nonce: nonce, Revision: rev}
	}
	vacancy := func(rev uint64) LeaderInfo { return LeaderInfo{Revision: rev} }
	cases := []struct {
		name     string
		seen     []LeaderInfo
		released uint64
		want     bool
	}{
		{"nothing yet", nil, released, false},
		{"own term only", []LeaderInfo{leader(token, "self"), leader(12, "self")}, released, false},
		{"own release marker", []LeaderInfo{leader(12, "self"), vacancy(released)}, released, false},
		{"another's term", []LeaderInfo{vacancy(released), leader(15, "other")}, released, true},
		{"two vacancies after the term", []LeaderInfo{vacancy(released), vacancy(16)}, released, true},
		{"only a later vacancy: marker and term skipped", []LeaderInfo{vacancy(16)}, released, true},
		{"only a later vacancy, marker unknown", []LeaderInfo{vacancy(16)}, 0, false},
		{"an older term of another", []LeaderInfo{leader(5, "other")}, released, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &follower{self: "self"}
			for _, info := range c.seen {
				f.record(info)
			}
			if got := f.otherLed(token, c.released); got != c.want {
				t.Fatalf("otherLed = %v, want %v", got, c.want)
			}
		})
	}
}
