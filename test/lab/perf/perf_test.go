package perf

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

const sample = `DNS Performance Testing Tool
[Status] Sending queries (to 127.0.0.1:15353)
> NOERROR a.example. A 0.000661
> NXDOMAIN b.cluster.local. A 0.001337
> SERVFAIL c.example. A 0.000200
> T d.example. A
> NOERROR e.cluster.local. A 0.000100
Statistics:
  Queries sent:         5
`

func expect(q string) int {
	if strings.HasSuffix(q, "cluster.local.") && strings.HasPrefix(q, "b.") {
		return dns.RcodeNameError
	}
	return dns.RcodeSuccess
}

func TestParse(t *testing.T) {
	r, err := Parse(strings.NewReader(sample), expect)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 5 || r.Answered != 4 || r.Lost != 1 || r.Succeeded != 3 {
		t.Fatalf("sent %d answered %d lost %d succeeded %d, want 5 4 1 3", r.Sent, r.Answered, r.Lost, r.Succeeded)
	}
	if r.Rcodes["SERVFAIL"] != 1 || r.Rcodes["NOERROR"] != 2 {
		t.Errorf("rcodes %v", r.Rcodes)
	}
	if got := r.SuccessRate(); got != 0.6 {
		t.Errorf("success rate %v, want 0.6", got)
	}
	if got := r.Percentile(50); got != 200*time.Microsecond {
		t.Errorf("p50 %v, want 200µs", got)
	}
	if got := r.Percentile(100); got != 1337*time.Microsecond {
		t.Errorf("p100 %v", got)
	}
	if got := r.Percentile(1); got != 100*time.Microsecond {
		t.Errorf("p1 %v", got)
	}
}

func TestParseRejectsBadLatency(t *testing.T) {
	if _, err := Parse(strings.NewReader("> NOERROR a. A x\n"), nil); err == nil {
		t.Fatal("bad latency accepted")
	}
}

func TestPercentileNearestRank(t *testing.T) {
	r := &Result{}
	for i := 1; i <= 1000; i++ {
		r.Latencies = append(r.Latencies, time.Duration(1001-i)*time.Microsecond)
	}
	for p, want := range map[float64]time.Duration{50: 500 * time.Microsecond, 99: 990 * time.Microsecond, 99.9: 999 * time.Microsecond} {
		if got := r.Percentile(p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func TestMerge(t *testing.T) {
	a := &Result{Sent: 2, Answered: 2, Succeeded: 1, Rcodes: map[string]int{"NOERROR": 2}, Latencies: []time.Duration{1, 2}}
	b := &Result{Sent: 3, Answered: 1, Lost: 2, Succeeded: 1, Rcodes: map[string]int{"NOERROR": 1}, Latencies: []time.Duration{3}}
	a.Merge(b)
	if a.Sent != 5 || a.Lost != 2 || a.Succeeded != 2 || a.Rcodes["NOERROR"] != 3 || len(a.Latencies) != 3 {
		t.Errorf("merged %+v", a)
	}
}

func TestArgs(t *testing.T) {
	got := strings.Join(Run{Netns: "ns1", Server: "10.0.0.10", Data: "f", QPS: 5000, Duration: 10 * time.Second, Clients: 2, Outstand: 500, Timeout: 2 * time.Second, BufferKB: 4096, Nice: -10, CPUs: "0"}.Args(), " ")
	want := "nice -n -10 ip netns exec ns1 taskset -c 0 dnsperf -s 10.0.0.10 -d f -v -Q 5000 -l 10 -c 2 -q 500 -t 2 -b 4096"
	if got != want {
		t.Errorf("args\n got %s\nwant %s", got, want)
	}
}

func TestFailuresKept(t *testing.T) {
	r, err := Parse(strings.NewReader(sample), expect)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"> SERVFAIL c.example. A 0.000200", "> T d.example. A"}
	if strings.Join(r.Failures, "|") != strings.Join(want, "|") {
		t.Errorf("failures %q, want %q", r.Failures, want)
	}
}

func TestPercentileSentCountsLost(t *testing.T) {
	r := &Result{Lost: 10}
	for i := 1; i <= 90; i++ {
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	if got := r.PercentileSent(50, 2*time.Second); got != 50*time.Millisecond {
		t.Errorf("p50 = %v, want 50ms", got)
	}
	if got := r.PercentileSent(95, 2*time.Second); got != 2*time.Second {
		t.Errorf("p95 = %v, want the 2s timeout (lost queries)", got)
	}
}

// TestRunAgainstServer runs the real dnsperf against a server the test
// starts on loopback and checks the parsed counts and the output file.
func TestRunAgainstServer(t *testing.T) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		t.Skip("dnsperf not installed (apt-get install dnsperf; make test installs it)")
	}
	up := testdns.Start(t, "192.0.2.7")
	host, port, err := net.SplitHostPort(up.Addr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "queries.txt")
	if err := os.WriteFile(data, []byte("a.example. A\nb.example. A\nc.example. A\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.txt")
	run := Run{Server: host, Port: port, Data: data, Once: true, Timeout: 2 * time.Second, Output: out}
	res, err := RunAll([]Run{run}, func(string) int { return dns.RcodeSuccess })
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 3 || res.Succeeded != 3 || len(res.Latencies) != 3 {
		t.Fatalf("sent %d succeeded %d latencies %d, want 3 3 3", res.Sent, res.Succeeded, len(res.Latencies))
	}
	kept, err := os.ReadFile(out)
	if err != nil || strings.Count(string(kept), "\n> NOERROR ") != 3 {
		t.Fatalf("output file %s: %v\n%s", out, err, kept)
	}
	if up.Total() != 3 {
		t.Errorf("server saw %d queries, want 3", up.Total())
	}
}
