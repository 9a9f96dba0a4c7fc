// Package checker checks histories of lease holdings for the two safety
// properties a lease promises: mutual exclusion (no two holders believe
// they hold at the same time) and fencing (each holding's token is
// strictly greater than the token of every holding that began before it).
//
// Holders run in one process and record their holdings on one monotonic
// clock: Begin when a holder starts believing it holds (right after its
// acquire reports success), End when it stops believing (it saw IsHeld
// turn false, its Done channel closed, or it is about to release). A
// holding never ended lasts for ever: a holder that has not stopped
// believing excludes everyone after it.
package checker

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Checker collects holdings. It is safe for concurrent use.
type Checker struct {
	base time.Time // the origin of the monotonic clock offsets

	mu        sync.Mutex
	intervals []*Interval
}

// New returns an empty checker whose clock starts now.
func New() *Checker { return &Checker{base: time.Now()} }

// Interval is one holding: Holder believed it held, with fencing token
// Token, from From to To (offsets on the checker's clock). Read its fields
// only through Check's Report, which copies them.
type Interval struct {
	c      *Checker
	seq    int // order of Begin calls; breaks ties of From
	Holder string
	Token  uint64
	From   time.Duration
	To     time.Duration
	Open   bool // End not called yet
}

// Begin records that holder starts believing it holds, with token, now.
func (c *Checker) Begin(holder string, token uint64) *Interval {
	return c.BeginAt(holder, token, time.Now())
}

// BeginAt is Begin at time at, which must carry a monotonic clock reading
// (a time.Now() value or one derived from it).
func (c *Checker) BeginAt(holder string, token uint64, at time.Time) *Interval {
	c.mu.Lock()
	defer c.mu.Unlock()
	iv := &Interval{c: c, seq: len(c.intervals), Holder: holder, Token: token, From: at.Sub(c.base), Open: true}
	c.intervals = append(c.intervals, iv)
	return iv
}

// Add records a complete holding given by clock offsets, for replaying
// histories (open holdings: to < 0). It returns the interval.
func (c *Checker) Add(holder string, token uint64, from, to time.Duration) *Interval {
	c.mu.Lock()
	defer c.mu.Unlock()
	iv := &Interval{c: c, seq: len(c.intervals), Holder: holder, Token: token, From: from, To: to, Open: to < 0}
	if to < 0 {
		iv.To = 0
	}
	c.intervals = append(c.intervals, iv)
	return iv
}

// End records that the holder stopped believing it holds, now. Only the
// first End (or EndAt) of an interval counts.
func (iv *Interval) End() { iv.EndAt(time.Now()) }

// EndAt is End at time at (with a monotonic reading), for a holder that
// knows when its belief ended, such as a paused holder whose lease
// deadline passed while it was paused.
func (iv *Interval) EndAt(at time.Time) {
	c := iv.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !iv.Open {
		return
	}
	iv.Open = false
	iv.To = max(at.Sub(c.base), iv.From)
}

// Overlap is two holdings by different holders that overlap in time.
type Overlap struct {
	A, B     Interval
	Duration time.Duration // length of the overlap
}

// Regression is a holding whose token is not strictly greater than the
// token of a holding that began before it.
type Regression struct {
	Earlier, Later Interval
}

// Report is the result of Check.
type Report struct {
	Intervals   int           // holdings recorded
	Holders     int           // distinct holders
	Handoffs    int           // changes of holder, in order of Begin
	Open        int           // holdings not ended (they last for ever)
	Overlaps    []Overlap     // every overlapping pair of different holders
	Regressions []Regression  // every holding whose token regressed, with the earlier holding of the largest token
	MaxGap      time.Duration // longest time with no holder, between the first Begin and the last End
}

// OK reports whether no violation was found.
func (r Report) OK() bool { return len(r.Overlaps) == 0 && len(r.Regressions) == 0 }

// String summarizes the report and lists up to five violations of each kind.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "intervals=%d holders=%d handoffs=%d open=%d overlaps=%d regressions=%d max_gap=%v",
		r.Intervals, r.Holders, r.Handoffs, r.Open, len(r.Overlaps), len(r.Regressions), r.MaxGap.Round(time.Millisecond))
	for i, o := range r.Overlaps {
		if i == 5 {
			b.WriteString("\n  ...")
			break
		}
		fmt.Fprintf(&b, "\n  overlap %v: %s", o.Duration, describe(o.A, o.B))
	}
	for i, g := range r.Regressions {
		if i == 5 {
			b.WriteString("\n  ...")
			break
		}
		fmt.Fprintf(&b, "\n  token regression: %s", describe(g.Earlier, g.Later))
	}
	return b.String()
}

func describe(a, b Interval) string {
	return fmt.Sprintf("%s token %d [%v, %v] vs %s token %d [%v, %v]",
		a.Holder, a.Token, a.From, a.To, b.Holder, b.Token, b.From, b.To)
}

// Intervals returns a copy of every holding recorded, in Begin order.
// Open ones show To as now.
func (c *Checker) Intervals() []Interval {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Since(c.base)
	out := make([]Interval, len(c.intervals))
	for i, iv := range c.intervals {
		out[i] = *iv
		out[i].c = nil
		if iv.Open {
			out[i].To = max(now, iv.From)
		}
	}
	return out
}

// Check checks every holding recorded so far. Holdings touching at one
// instant (one ends exactly when the next begins) do not overlap.
func (c *Checker) Check() Report { return Check(c.Intervals()) }

// Forever is the end of a holding that has not ended.
const Forever = time.Duration(math.MaxInt64)

// Check checks a history. Intervals must have From <= To. An Open
// interval has not ended: it lasts for ever and overlaps every holding of
// another holder that begins after it.
func Check(ivs []Interval) Report {
	s := slices.Clone(ivs)
	for i := range s {
		if s[i].Open {
			s[i].To = Forever
		}
	}
	slices.SortStableFunc(s, func(a, b Interval) int {
		if a.From != b.From {
			if a.From < b.From {
				return -1
			}
			return 1
		}
		return a.seq - b.seq
	})
	var r Report
	r.Intervals = len(s)
	holders := map[string]bool{}
	var (
		maxTok   uint64
		maxIdx   = -1
		coverEnd time.Duration
	)
	for i, iv := range s {
		holders[iv.Holder] = true
		if iv.Open {
			r.Open++
		}
		if i > 0 && iv.Holder != s[i-1].Holder {
			r.Handoffs++
		}
		// Every later interval that begins before this one ends overlaps it.
		for j := i + 1; j < len(s) && s[j].From < iv.To; j++ {
			if s[j].Holder != iv.Holder && iv.From < s[j].To {
				r.Overlaps = append(r.Overlaps, Overlap{A: iv, B: s[j], Duration: min(iv.To, s[j].To) - s[j].From})
			}
		}
		if maxIdx >= 0 && iv.Token <= maxTok {
			r.Regressions = append(r.Regressions, Regression{Earlier: s[maxIdx], Later: iv})
		}
		if maxIdx < 0 || iv.Token > maxTok {
			maxTok, maxIdx = iv.Token, i
		}
		if i > 0 && iv.From > coverEnd {
			r.MaxGap = max(r.MaxGap, iv.From-coverEnd)
		}
		coverEnd = max(coverEnd, iv.To)
	}
	r.Holders = len(holders)
	return r
}

// Offset returns at on the checker's clock (at must carry a monotonic
// reading).
func (c *Checker) Offset(at time.Time) time.Duration { return at.Sub(c.base) }
