package checker

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ms = time.Millisecond

func TestCleanHistoryPasses(t *testing.T) {
	c := New()
	c.Add("a", 1, 0, 10*ms)
	c.Add("b", 3, 10*ms, 20*ms) // touching is not overlapping
	c.Add("a", 7, 25*ms, 30*ms)
	c.Add("c", 8, 40*ms, 50*ms)
	c.Add("c", 9, 50*ms, -1) // open: lasts for ever
	r := c.Check()
	if !r.OK() {
		t.Fatalf("clean history reported violations: %v", r)
	}
	if r.Intervals != 5 || r.Holders != 3 || r.Handoffs != 3 || r.Open != 1 {
		t.Errorf("counts = %v", r)
	}
	if r.MaxGap != 10*ms {
		t.Errorf("MaxGap = %v, want 10ms", r.MaxGap)
	}
}

func TestPlantedOverlapIsCaught(t *testing.T) {
	c := New()
	c.Add("a", 1, 0, 10*ms)
	c.Add("b", 2, 9*ms, 20*ms) // begins 1ms before a ends
	c.Add("c", 3, 30*ms, 40*ms)
	r := c.Check()
	if len(r.Overlaps) != 1 || len(r.Regressions) != 0 || r.OK() {
		t.Fatalf("want exactly one overlap: %v", r)
	}
	o := r.Overlaps[0]
	if o.A.Holder != "a" || o.B.Holder != "b" || o.Duration != ms {
		t.Errorf("overlap = %+v", o)
	}
}

func TestOpenIntervalOverlapsLaterHolder(t *testing.T) {
	c := New()
	c.Add("a", 1, 0, -1) // never ended: still believes it holds
	c.Add("b", 2, 5*ms, 6*ms)
	if r := c.Check(); len(r.Overlaps) != 1 {
		t.Fatalf("an open holding must overlap a later one: %v", r)
	}
}

func TestPlantedTokenRegressionIsCaught(t *testing.T) {
	c := New()
	c.Add("a", 5, 0, 10*ms)
	c.Add("b", 9, 10*ms, 20*ms)
	c.Add("c", 7, 20*ms, 30*ms) // smaller than b's
	c.Add("a", 9, 30*ms, 40*ms) // equal to b's: not strictly greater
	r := c.Check()
	if len(r.Overlaps) != 0 || len(r.Regressions) != 2 || r.OK() {
		t.Fatalf("want two regressions and no overlap: %v", r)
	}
	for _, g := range r.Regressions {
		if g.Earlier.Holder != "b" || g.Earlier.Token != 9 {
			t.Errorf("regression blamed on %+v, want b's token 9", g.Earlier)
		}
	}
}

func TestSameHolderMayTouchButOverlapsOfSameHolderAreIgnored(t *testing.T) {
	c := New()
	c.Add("a", 1, 0, 10*ms)
	c.Add("a", 2, 5*ms, 15*ms)
	if r := c.Check(); !r.OK() {
		t.Fatalf("one holder's own holdings cannot exclude each other: %v", r)
	}
}

func TestLiveClockBeginEnd(t *testing.T) {
	c := New()
	a := c.Begin("a", 1)
	a.End()
	a.End() // the first End counts
	b := c.Begin("b", 2)
	b.End()
	if r := c.Check(); !r.OK() || r.Intervals != 2 || r.Open != 0 {
		t.Fatalf("sequential live holdings: %v", r)
	}
	// A holder that ends after another began is an overlap.
	x := c.Begin("x", 3)
	y := c.Begin("y", 4)
	y.End()
	x.End()
	if r := c.Check(); len(r.Overlaps) != 1 {
		t.Fatalf("live overlap not caught: %v", r)
	}
	// EndAt in the past, before the next Begin, is not an overlap.
	c2 := New()
	p := c2.Begin("p", 1)
	pausedUntil := time.Now()
	q := c2.Begin("q", 2)
	q.End()
	p.EndAt(pausedUntil)
	if r := c2.Check(); !r.OK() {
		t.Fatalf("EndAt before the next Begin: %v", r)
	}
}

func TestConcurrentUse(t *testing.T) {
	c := New()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				iv := c.Begin(fmt.Sprint("h", g), uint64(i))
				iv.End()
				_ = c.Check()
			}
		})
	}
	wg.Wait()
	if r := c.Check(); r.Intervals != 800 {
		t.Fatalf("intervals = %d", r.Intervals)
	}
}

// bruteForce is the definition, pair by pair.
func bruteForce(ivs []Interval) (overlaps, regressions int) {
	before := func(a, b Interval) bool { return a.From < b.From || a.From == b.From && a.seq < b.seq }
	ivs = slices.Clone(ivs)
	for i := range ivs {
		if ivs[i].Open {
			ivs[i].To = Forever
		}
	}
	for i, a := range ivs {
		regressed := false
		for j, b := range ivs {
			if i == j {
				continue
			}
			if i < j && a.Holder != b.Holder && a.From < b.To && b.From < a.To {
				overlaps++
			}
			if before(b, a) && b.Token >= a.Token {
				regressed = true
			}
		}
		if regressed {
			regressions++
		}
	}
	return overlaps, regressions
}

func FuzzChecker(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 10, 1, 2, 10, 10})                          // touching, clean
	f.Add([]byte{0, 1, 0, 10, 1, 2, 9, 10})                           // overlap
	f.Add([]byte{0, 5, 0, 10, 1, 3, 10, 10})                          // regression
	f.Add([]byte{0, 5, 5, 0, 1, 5, 5, 0, 2, 5, 5, 3})                 // zero-length, equal starts and tokens
	f.Add([]byte{2, 9, 0, 255, 1, 1, 3, 4, 0, 2, 100, 7, 1, 3, 1, 1}) // with an open holding
	f.Fuzz(func(t *testing.T, data []byte) {
		c := New()
		for n := 0; len(data) >= 4 && n < 64; n++ {
			holder := fmt.Sprint("h", data[0]%4)
			token := uint64(data[1] % 16)
			from := time.Duration(data[2]) * ms
			to := from + time.Duration(data[3])*ms
			if data[3] == 255 {
				to = -1 // open
			}
			c.Add(holder, token, from, to)
			data = data[4:]
		}
		ivs := c.Intervals()
		r := Check(ivs)
		wantO, wantR := bruteForce(ivs)
		if len(r.Overlaps) != wantO || len(r.Regressions) != wantR {
			t.Fatalf("Check found %d overlaps, %d regressions; brute force %d, %d\n%v",
				len(r.Overlaps), len(r.Regressions), wantO, wantR, r)
		}
		for _, o := range r.Overlaps {
			if o.Duration <= 0 && !(o.A.From == o.A.To || o.B.From == o.B.To) {
				t.Fatalf("non-positive overlap %+v", o)
			}
		}
	})
}
