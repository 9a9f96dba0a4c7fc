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
