package peers

import (
	"fmt"
	"os"
	"sort"
	"testing"
)

func BenchmarkZZDlockOnly(b *testing.B) {
	s := startShared(b)
	n := envInts(b, "ZZ_WAITERS", []int{100})[0]
	c := newCrowd(b, "dlock", dlockContenders(b, s, fmt.Sprintf("zz_%d", n), n+1, n+1), settleFor(n+1))
	runCrowds(b, []*crowd{c})
	ds := append([]int64(nil), make([]int64, 0)...)
	for _, d := range c.handoffs {
		ds = append(ds, d.Microseconds())
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	fmt.Fprintln(os.Stderr, "sorted µs:", ds)
}
