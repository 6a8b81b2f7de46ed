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
	return &Results{
		Settings:     Settings{Variant: "short", QPS: 10000, Restarts: 2, SocketActivation: true},
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
			p := r.LocalDNS["external"]
			p.P99 = 4 * time.Millisecond // 7.5x only
			r.LocalDNS["external"] = p
		},
		"CoreDNS backend balance (localdns)": func(r *Results) { r.LocalDNSWarm.CoreDNS = []float64{9000, 1000} },
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
	for _, want := range []string{"PASS: every bar met", "| cluster | centralized | 5.00 ms | 10.00 ms | 20.00 ms", "![latency-cluster](latency-cluster.png)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
