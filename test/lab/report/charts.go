package report

import (
	"fmt"
	"image/color"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Colours of the two scenarios and the two backends.
var (
	colCentral   = color.RGBA{R: 0xd6, G: 0x60, B: 0x4d, A: 0xff}
	colLocal     = color.RGBA{R: 0x2b, G: 0x83, B: 0xba, A: 0xff}
	colReference = color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}
	colBackend   = []color.Color{color.RGBA{R: 0x8c, G: 0x6b, B: 0xb1, A: 0xff}, color.RGBA{R: 0x66, G: 0xc2, B: 0xa5, A: 0xff}}
)

// series is one bar colour of a grouped bar chart.
type series struct {
	name   string
	color  color.Color
	values []float64
	labels []string // printed above each bar
}

// groupedBars draws groups of bars side by side (one bar per series in each
// group), with a value label above every bar.
func groupedBars(path, title, ylabel string, ymax float64, groups []string, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = 13
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	width := vg.Points(150 / float64(len(ss)+1))
	var top float64
	for i, s := range ss {
		bars, err := plotter.NewBarChart(plotter.Values(s.values), width)
		if err != nil {
			return fmt.Errorf("chart %s: %w", path, err)
		}
		bars.Color = s.color
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(len(ss)-1)/2)
		p.Add(bars)
		p.Legend.Add(s.name, bars)
		var xys plotter.XYs
		for g, v := range s.values {
			xys = append(xys, plotter.XY{X: float64(g), Y: v})
			top = max(top, v)
		}
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: s.labels})
		if err != nil {
			return fmt.Errorf("chart %s: %w", path, err)
		}
		for j := range labels.TextStyle {
			labels.TextStyle[j].XAlign = draw.XCenter
			labels.TextStyle[j].YAlign = draw.YBottom
			labels.TextStyle[j].Font.Size = 9
		}
		labels.Offset = vg.Point{X: bars.Offset, Y: 2}
		p.Add(labels)
	}
	p.Y.Max = top * 1.18 // room for the labels and the legend
	if ymax > 0 {
		p.Y.Max = ymax
	}
	p.NominalX(groups...)
	p.X.Min, p.X.Max = -0.6, float64(len(groups))-0.4
	p.X.Tick.Label.Font.Size = font.Length(11)
	return p.Save(7*vg.Inch, 4.2*vg.Inch, path)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencyChart compares the percentiles of one class, like the seed's graphs.
func latencyChart(dir string, r *Results, class string) (string, error) {
	a, b := r.Centralized[class], r.LocalDNS[class]
	pa := []time.Duration{a.P50, a.P95, a.P99}
	pb := []time.Duration{b.P50, b.P95, b.P99}
	mk := func(name string, c color.Color, ds []time.Duration) series {
		s := series{name: name, color: c}
		for _, d := range ds {
			s.values = append(s.values, ms(d))
			s.labels = append(s.labels, fmtDur(d))
		}
		return s
	}
	ss := []series{mk("centralized CoreDNS", colCentral, pa), mk("localdns", colLocal, pb)}
	if r.Reference != nil {
		x := r.Reference[class]
		ss = append(ss, mk("reference: "+r.Settings.Reference, colReference, []time.Duration{x.P50, x.P95, x.P99}))
	}
	file := "latency-" + class + ".png"
	err := groupedBars(filepath.Join(dir, file),
		fmt.Sprintf("Resolution time, %s names, %d QPS (lower is better)", class, r.Settings.QPS),
		fmt.Sprintf("latency (ms; a lost query counts as %s)", fmtDur(a.Timeout)), 0,
		[]string{"p50", "p95", "p99"}, ss)
	return file, err
}

// shareChart shows each backend's share of the queries CoreDNS received in
// each scenario, as the seed's pie charts do.
func shareChart(dir string, r *Results) (string, error) {
	central, local := r.backendShares()
	var ss []series
	for i, b := range r.Backends {
		s := series{name: b, color: colBackend[i%len(colBackend)]}
		for _, sh := range [][]float64{central, local} {
			s.values = append(s.values, 100*sh[i])
			s.labels = append(s.labels, fmt.Sprintf("%.1f%%", 100*sh[i]))
		}
		ss = append(ss, s)
	}
	file := "backend-share.png"
	err := groupedBars(filepath.Join(dir, file), "Share of queries per CoreDNS pod", "share of the queries CoreDNS received (%)", 115,
		[]string{"centralized (pods -> service IP)", "localdns (node -> service IP)"}, ss)
	return file, err
}

// loadChart compares the rate of queries reaching CoreDNS and the external
// resolver during the measured phases.
func loadChart(dir string, r *Results) (string, error) {
	ca, ea := r.upstreamRates(r.Centralized)
	cb, eb := r.upstreamRates(r.LocalDNS)
	mk := func(name string, c color.Color, vs ...float64) series {
		s := series{name: name, color: c, values: vs}
		for _, v := range vs {
			s.labels = append(s.labels, fmt.Sprintf("%.0f/s", v))
		}
		return s
	}
	file := "upstream-load.png"
	err := groupedBars(filepath.Join(dir, file), fmt.Sprintf("Queries reaching the upstreams at %d QPS from the pods", r.Settings.QPS), "queries per second", 0,
		[]string{"CoreDNS (both pods)", "external resolver"},
		[]series{mk("centralized CoreDNS", colCentral, ca, ea), mk("localdns", colLocal, cb, eb)})
	return file, err
}

// backendShares returns each backend's share in the centralized phases and
// in localdns's (warm-up included: all it forwarded).
func (r *Results) backendShares() (central, local []float64) {
	sum := func(ps ...Phase) []float64 {
		out := make([]float64, len(r.Backends))
		var total float64
		for _, p := range ps {
			for i, v := range p.CoreDNS {
				out[i] += v
				total += v
			}
		}
		for i := range out {
			if total > 0 {
				out[i] /= total
			}
		}
		return out
	}
	central = sum(r.Centralized["cluster"], r.Centralized["external"])
	local = sum(r.LocalDNSWarm, r.LocalDNS["cluster"], r.LocalDNS["external"])
	return central, local
}

// upstreamRates returns the per-second rates reaching CoreDNS and the
// external resolver over a scenario's measured phases.
func (r *Results) upstreamRates(phases map[string]Phase) (coredns, external float64) {
	var secs float64
	for _, c := range Classes {
		p := phases[c]
		coredns += p.CoreDNSTotal()
		external += p.External
		secs += p.Elapsed.Seconds()
	}
	if secs == 0 {
		return 0, 0
	}
	return coredns / secs, external / secs
}
