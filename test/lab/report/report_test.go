package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample() *Results {
	ph := func(p99 time.Duration, coredns ...float64) Phase {
		return Phase{Sent: 1000, Answered: 1000, Succeeded: 1000, P50: p99 / 4, P95: p99 / 2, P99: p99, Elapsed: 10 * time.Second, CoreDNS: coredns}
	}
	round := func(central, local map[string]time.Duration) Round {
		r := Round{Centralized: map[string]Phase{}, LocalDNS: map[string]Phase{}}
		for c, d := range central {
			r.Centralized[c] = ph(d)
			r.LocalDNS[c] = ph(local[c])
		}
		return r
	}
	return &Results{
		Settings: Settings{Variant: "short", QPS: 10000, Restarts: 2, SocketActivation: true, Rounds: 3},
		Rounds: []Round{
			round(map[string]time.Duration{"cluster": 20 * time.Millisecond, "external": 30 * time.Millisecond}, map[string]time.Duration{"cluster": time.Millisecond, "external": 2 * time.Millisecond}),
			// A round disturbed by the machine: the median ignores it.
			round(map[string]time.Duration{"cluster": 12 * time.Millisecond, "external": 20 * time.Millisecond}, map[string]time.Duration{"cluster": 3 * time.Millisecond, "external": 5 * time.Millisecond}),
			round(map[string]time.Duration{"cluster": 25 * time.Millisecond, "external": 33 * time.Millisecond}, map[string]time.Duration{"cluster": 2 * time.Millisecond, "external": 3 * time.Millisecond}),
		},
		Backends:     []string{"coredns-a", "coredns-b"},
		Centralized:  map[string]Phase{"cluster": ph(20*time.Millisecond, 50000, 50000), "external": ph(30*time.Millisecond, 90000, 10000)},
		LocalDNS:     map[string]Phase{"cluster": ph(time.Millisecond, 100, 100), "external": ph(2*time.Millisecond, 300, 200)},
		LocalDNSWarm: Phase{CoreDNS: []float64{5000, 5200}},
		Outage:       Phase{Sent: 500, Succeeded: 500, Stale: 40},
		Restart:      Phase{Sent: 800, Succeeded: 800},
		RestartPIDs:  []int{10, 11, 12},
	}
}

func byName(bars []Bar) map[string]Bar {
	m := map[string]Bar{}
	for _, b := range bars {
		m[b.Name] = b
	}
	return m
}

func TestBarsPass(t *testing.T) {
	bars := sample().Bars()
	if !Passed(bars) {
		t.Fatalf("sample should pass: %+v", bars)
	}
	if len(bars) != 6 {
		t.Errorf("%d bars, want 6", len(bars))
	}
}

func TestBarsFail(t *testing.T) {
	tests := map[string]func(r *Results){
		"p99 latency, external names (cache hits)": func(r *Results) {
			// Two rounds of three below 10x: the median fails.
			p := r.Rounds[2].LocalDNS["external"]
			p.P99 = 4 * time.Millisecond // 8.25x only
			r.Rounds[2].LocalDNS["external"] = p
		},
		"p99 latency, cluster names (cache hits)": func(r *Results) { r.Rounds = nil },
		"CoreDNS backend balance (localdns)":      func(r *Results) { r.LocalDNSWarm.CoreDNS = []float64{9000, 1000} },
		"queries reaching CoreDNS": func(r *Results) {
			p := r.LocalDNS["cluster"]
			p.CoreDNS = []float64{10000, 10000}
			r.LocalDNS["cluster"] = p
		},
		"upstream outage":                       func(r *Results) { r.Outage.Succeeded = 499 },
		"localdns restarted 2 times under load": func(r *Results) { r.RestartPIDs = []int{10, 11} },
	}
	for name, mutate := range tests {
		r := sample()
		mutate(r)
		bars := byName(r.Bars())
		if bar, ok := bars[name]; !ok || bar.Pass {
			t.Errorf("%s: bar %+v should fail", name, bar)
		}
		if Passed(r.Bars()) {
			t.Errorf("%s: Passed despite a failed bar", name)
		}
	}
	r := sample()
	r.Restart.Lost, r.Restart.Succeeded = 1, 799
	if byName(r.Bars())["localdns restarted 2 times under load"].Pass {
		t.Error("a lost query across restarts passed")
	}
}

func TestMedianP99Ratio(t *testing.T) {
	r := sample()
	median, ratios := r.MedianP99Ratio("cluster")
	if median != 12.5 || len(ratios) != 3 || ratios[0] != 20 || ratios[1] != 4 {
		t.Fatalf("median %v ratios %v, want 12.5 of [20 4 12.5]", median, ratios)
	}
	r.Rounds = r.Rounds[:2]
	if median, _ := r.MedianP99Ratio("cluster"); median != 12 {
		t.Errorf("median of two rounds %v, want their mean 12", median)
	}
}

func TestPlusPoolsCounters(t *testing.T) {
	a := Phase{CoreDNS: []float64{1, 2}, External: 3, Hits: 4, Elapsed: time.Second, LoadCPUBusy: 0.5, LocalDNSCPU: 0.2}
	b := Phase{CoreDNS: []float64{10, 20}, External: 30, Hits: 40, Elapsed: 3 * time.Second, LoadCPUBusy: 0.9, LocalDNSCPU: 0.4}
	var sum Phase
	sum = sum.Plus(a).Plus(b)
	if sum.CoreDNS[0] != 11 || sum.CoreDNS[1] != 22 || sum.External != 33 || sum.Hits != 44 || sum.Elapsed != 4*time.Second {
		t.Fatalf("sum %+v", sum)
	}
	if d := sum.LoadCPUBusy - 0.8; d > 1e-9 || d < -1e-9 {
		t.Errorf("load CPU busy %v, want the time-weighted 0.8", sum.LoadCPUBusy)
	}
	if d := sum.LocalDNSCPU - 0.6; d > 1e-9 || d < -1e-9 {
		t.Errorf("localdns CPU %v, want 0.6", sum.LocalDNSCPU)
	}
	if a.CoreDNS[0] != 1 {
		t.Error("Plus changed its argument")
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	r := sample()
	if err := Write(dir, r, r.Bars()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"REPORT.md", "results.json", "latency-cluster.png", "latency-external.png", "backend-share.png", "upstream-load.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "REPORT.md"))
	for _, want := range []string{"PASS: every bar met", "| cluster | centralized | 5.00 ms | 10.00 ms | 20.00 ms", "![latency-cluster](latency-cluster.png)", "| 2 | cluster | 12.00 ms | 3.00 ms | 4.0x |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestAdvisoryLatencyBars(t *testing.T) {
	r := sample()
	p := r.Rounds[0].LocalDNS["cluster"]
	p.P99 = 20 * time.Millisecond // 1x in two rounds of three: the median fails
	r.Rounds[0].LocalDNS["cluster"] = p
	r.Rounds[2].LocalDNS["cluster"] = p
	if Passed(r.Bars()) {
		t.Fatal("missed latency bar passed while enforced")
	}
	r.Settings.LatencyAdvisory = true
	bars := r.Bars()
	if !Passed(bars) {
		t.Fatal("missed advisory latency bar failed the run")
	}
	if b := byName(bars)["p99 latency, cluster names (cache hits)"]; b.Pass || !b.Advisory {
		t.Errorf("bar %+v: want missed and advisory", b)
	}
	r.Outage.Succeeded--
	if Passed(r.Bars()) {
		t.Error("an enforced bar missed, yet the run passed")
	}
	md := Markdown(r, bars, nil)
	if !strings.Contains(md, "missed (advisory)") {
		t.Error("report does not mark the advisory miss")
	}
}

// TestReference: a run with a reference resolver shows its p99 and ratio
// per round and the medians of both next to each other, and leaves the
// bars (which judge localdns) as they were.
func TestReference(t *testing.T) {
	r := sample()
	before := r.Bars()
	r.Settings.Reference = "unbound 1.17.1"
	refP99 := []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 5 * time.Millisecond}
	for i := range r.Rounds {
		r.Rounds[i].Reference = map[string]Phase{}
		for _, c := range Classes {
			r.Rounds[i].Reference[c] = Phase{Sent: 1000, Succeeded: 1000, P99: refP99[i]}
		}
	}
	r.Reference = map[string]Phase{"cluster": {Sent: 3000, Succeeded: 3000, P99: 4 * time.Millisecond}, "external": {Sent: 3000, Succeeded: 3000, P99: 4 * time.Millisecond}}
	// cluster: centralized 20, 12, 25 ms against 2, 4, 5 ms: 10x, 3x, 5x.
	if median, ratios := r.MedianReferenceP99Ratio("cluster"); median != 5 || len(ratios) != 3 || ratios[0] != 10 {
		t.Fatalf("reference median %v ratios %v, want 5 of [10 3 5]", median, ratios)
	}
	if after := r.Bars(); len(after) != len(before) || after[0] != before[0] || after[1] != before[1] {
		t.Errorf("the reference changed the bars: %+v, was %+v", after, before)
	}
	md := Markdown(r, r.Bars(), nil)
	for _, want := range []string{
		"| 1 | cluster | 20.00 ms | 1.00 ms | 20.0x | 5.00 ms | 250 µs | 2.00 ms | 10.0x |",
		"| cluster | reference: unbound 1.17.1 |",
		"| cluster | 12.5x | 5.0x |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
