// Command plot draws bench/results/handoff.png (the distribution of
// handoff latencies) and bench/results/failover.png (the failover
// timeline) from the samples the benchmarks write when
// NATSKVLEASE_BENCH_SAMPLES names a directory. It is a module of its own
// so that gonum/plot's dependencies stay out of natskvlease's go.mod.
//
//	cd bench/plot && go run . -samples ../results/samples -out ../results
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func main() {
	samples := flag.String("samples", "../results/samples", "directory of the benchmarks' samples")
	out := flag.String("out", "../results", "directory to write the PNGs to")
	ttl := flag.Float64("ttl", 1000, "lease TTL of the failover benchmark, ms")
	flag.Parse()
	if err := handoff(*samples, filepath.Join(*out, "handoff.png")); err != nil {
		fatal(err)
	}
	if err := failover(*samples, filepath.Join(*out, "failover.png"), *ttl); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "plot:", err)
	os.Exit(1)
}

// table is a samples file: a header of column names, then rows.
type table map[string][]float64

func readTable(path string) (table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cols []string
	t := table{}
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if cols == nil {
			cols = fields
			continue
		}
		for i, v := range fields {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || i >= len(cols) {
				return nil, fmt.Errorf("%s: bad row %q", path, sc.Text())
			}
			t[cols[i]] = append(t[cols[i]], x)
		}
	}
	return t, sc.Err()
}

var waiterColors = map[string]color.Color{
	"1":   color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"10":  color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	"100": color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

func handoff(dir, out string) error {
	var plots []*plot.Plot
	for _, top := range []string{"R1", "R3"} {
		p := plot.New()
		p.Title.Text = "Handoff latency, " + top + " (cumulative)"
		p.X.Label.Text = "release → waiter holds (µs, log scale)"
		p.Y.Label.Text = "fraction of handoffs"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min, p.Y.Max = 0, 1
		p.Legend.Top = false
		p.Legend.Left = false
		p.Legend.XOffs = -vg.Points(4)
		p.Legend.YOffs = vg.Points(4)
		p.Add(plotter.NewGrid())
		var rtts []float64
		found := false
		for _, kind := range []string{"manager", "dlock"} {
			for _, n := range []string{"1", "10", "100"} {
				path := filepath.Join(dir, fmt.Sprintf("handoff_BenchmarkHandoff_%s_%s_waiters%s.tsv", top, kind, n))
				t, err := readTable(path)
				if os.IsNotExist(err) {
					continue
				}
				if err != nil {
					return err
				}
				found = true
				rtts = append(rtts, t["rtt_us"]...)
				line, err := plotter.NewLine(cdf(t["handoff_us"]))
				if err != nil {
					return err
				}
				line.Color = waiterColors[n]
				line.Width = vg.Points(1.5)
				if kind == "dlock" {
					line.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
				}
				p.Add(line)
				p.Legend.Add(fmt.Sprintf("%s, %s waiter(s)", kind, n), line)
			}
		}
		if !found {
			continue
		}
		if len(rtts) > 0 {
			rtt := median(rtts)
			for k, style := range []struct {
				mult  float64
				label string
			}{{1, "1 raw round trip (p50)"}, {3, "3 raw round trips (target)"}} {
				v := verticalLine(rtt*style.mult, 0, 1)
				v.Color = color.Gray{Y: 0x60}
				v.Dashes = []vg.Length{vg.Points(1 + 3*float64(k)), vg.Points(2)}
				p.Add(v)
				p.Legend.Add(style.label, v)
			}
		}
		plots = append(plots, p)
	}
	if len(plots) == 0 {
		return fmt.Errorf("no handoff samples in %s", dir)
	}
	return savePlots(out, plots, 7*vg.Inch, 5*vg.Inch)
}

func failover(dir, out string, ttl float64) error {
	p := plot.New()
	p.Title.Text = "Failover timeline: the holder's connection is closed at 0, right after its last write"
	p.X.Label.Text = "ms since the holder's connection was closed"
	p.Y.Label.Text = "one failover per row"
	p.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{})
	p.Add(plotter.NewGrid())
	row := 0.0
	found := false
	var aliveLegend bool
	var maxX float64
	for _, v := range []struct {
		file, label string
		color       color.Color
		glyph       draw.GlyphDrawer
	}{
		{"manager_after-acquire", "waiting manager holds it (holder killed right after acquiring)", color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.CircleGlyph{}},
		{"manager_after-renew", "waiting manager holds it (holder killed right after renewing)", color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, draw.CircleGlyph{}},
		{"dlock_after-acquire", "waiting dlock.Lock returns (holder killed right after acquiring)", color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, draw.TriangleGlyph{}},
		{"dlock_after-renew", "waiting dlock.Lock returns (holder killed right after renewing)", color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, draw.TriangleGlyph{}},
	} {
		t, err := readTable(filepath.Join(dir, "failover_BenchmarkFailover_"+v.file+".tsv"))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		found = true
		var pts plotter.XYs
		for i, exp := range t["expiry_ms"] {
			row++
			if math.IsNaN(exp) { // marker not seen: the key lived until the waiter's write at most
				exp = t["failover_ms"][i]
			}
			alive, err := plotter.NewLine(plotter.XYs{{X: 0, Y: row}, {X: exp, Y: row}})
			if err != nil {
				return err
			}
			alive.Color = color.Gray{Y: 0xc8}
			alive.Width = vg.Points(3)
			p.Add(alive)
			if !aliveLegend {
				p.Legend.Add("dead holder's key still on the server (until the expiry marker)", alive)
				aliveLegend = true
			}
			fo := t["failover_ms"][i]
			pts = append(pts, plotter.XY{X: fo, Y: row})
			maxX = math.Max(maxX, fo)
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		sc.Color = v.color
		sc.Shape = v.glyph
		sc.Radius = vg.Points(3)
		p.Add(sc)
		p.Legend.Add(v.label, sc)
		row++ // a gap between the groups
	}
	if !found {
		return fmt.Errorf("no failover samples in %s", dir)
	}
	for _, l := range []struct {
		x     float64
		label string
		dash  []vg.Length
	}{{ttl, "TTL", []vg.Length{vg.Points(2), vg.Points(2)}}, {ttl + 100, "TTL + 100 ms (target)", []vg.Length{vg.Points(6), vg.Points(3)}}} {
		v := verticalLine(l.x, 0, row)
		v.Color = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
		v.Dashes = l.dash
		p.Add(v)
		p.Legend.Add(l.label, v)
	}
	p.X.Min = 0
	p.X.Max = math.Max(maxX, ttl+100) * 1.05
	p.Y.Min, p.Y.Max = 0, row*1.4 // room for the legend above the rows
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	return savePlots(out, []*plot.Plot{p}, 9*vg.Inch, 5*vg.Inch)
}

// cdf returns the empirical cumulative distribution of xs as a step line.
func cdf(xs []float64) plotter.XYs {
	s := slices.Clone(xs)
	slices.Sort(s)
	pts := make(plotter.XYs, 0, 2*len(s))
	for i, x := range s {
		x = math.Max(x, 1) // log scale
		pts = append(pts, plotter.XY{X: x, Y: float64(i) / float64(len(s))}, plotter.XY{X: x, Y: float64(i+1) / float64(len(s))})
	}
	return pts
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func verticalLine(x, y0, y1 float64) *plotter.Line {
	l, err := plotter.NewLine(plotter.XYs{{X: x, Y: y0}, {X: x, Y: y1}})
	if err != nil {
		panic(err)
	}
	return l
}

// savePlots draws the plots side by side, each w × h, into a PNG.
func savePlots(path string, plots []*plot.Plot, w, h vg.Length) error {
	img := vgimg.New(w*vg.Length(len(plots)), h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Points(10)}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
