package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

const sampleOutput = `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d /tmp/q -n 1 -v
> NOERROR a.example A 0.000416
> NOERROR b.example A 0.001195
> T c.example A
[Status] Testing complete (end of file)

Statistics:

  Queries sent:         3
  Queries completed:    2 (66.67%)
  Queries lost:         1 (33.33%)

  Response codes:       NOERROR 2 (100.00%)
  Run time (s):         0.002383
  Queries per second:   839.278221

  Average Latency (s):  0.000805 (min 0.000416, max 0.001195)
`

func TestParseDNSPerf(t *testing.T) {
	res, err := parseDNSPerf(strings.NewReader(sampleOutput))
	if err != nil {
		t.Fatal(err)
	}
	if res.QPS != 839.278221 || res.Sent != 3 || res.Completed != 2 || res.Lost != 1 {
		t.Fatalf("wrong statistics: %+v", res)
	}
	want := []time.Duration{416 * time.Microsecond, 1195 * time.Microsecond}
	if len(res.Latencies) != len(want) {
		t.Fatalf("latencies %v, want %v", res.Latencies, want)
	}
	for i := range want {
		if res.Latencies[i] != want[i] {
			t.Fatalf("latencies %v, want %v", res.Latencies, want)
		}
	}
}

func TestParseDNSPerfNoStatistics(t *testing.T) {
	if _, err := parseDNSPerf(strings.NewReader("Error: could not open file\n")); err == nil {
		t.Fatal("accepted output without statistics")
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0.0001, 1}} {
		if got := percentile(s, tc.q); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestMedian(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
}

func TestCPUSnapshot(t *testing.T) {
	s, err := takeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU; both our own and the machine's counters must move.
	deadline := time.Now().Add(200 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	e, err := takeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if e.self <= s.self || e.machine <= s.machine || e.server <= s.server {
		t.Fatalf("CPU counters did not advance: %+v -> %+v (%d)", s, e, x)
	}
	u := cpuUsage(s, e, 0.2)
	if u.server <= 0 || u.other < 0 {
		t.Fatalf("usage %+v", u)
	}
}
