package main

import (
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/localdns/localdns/internal/config"
)

func TestMetricSum(t *testing.T) {
	text := `# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.
# TYPE coredns_dns_requests_total counter
coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:1053",type="A",view="",zone="."} 1500
coredns_dns_requests_total{family="1",proto="udp",server="dns://127.0.0.1:1053",type="NS",view="",zone="."} 2
coredns_dns_requests_total_other 99
labdns_queries_total 7
`
	if got := metricSum(text, "coredns_dns_requests_total"); got != 1502 {
		t.Errorf("coredns_dns_requests_total = %v, want 1502", got)
	}
	if got := metricSum(text, "labdns_queries_total"); got != 7 {
		t.Errorf("labdns_queries_total = %v, want 7", got)
	}
	if got := metricSum(text, "missing_total"); got != 0 {
		t.Errorf("missing metric = %v", got)
	}
}

func TestInterleave(t *testing.T) {
	got := interleave([]string{"a1", "a2", "a3"}, []string{"b1"})
	if want := []string{"a1", "b1", "a2", "a3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("interleave = %v, want %v", got, want)
	}
}

// TestProfileIsValid runs the lab's localdns profile through localdns's own
// decoder and validation, so a renamed profile field breaks this test and
// not a lab run.
func TestProfileIsValid(t *testing.T) {
	l := &lab{dir: t.TempDir()}
	p, err := config.Parse([]byte(l.localdnsProfile()))
	if err != nil {
		t.Fatalf("lab profile rejected by localdns:\n%s\n%v", l.localdnsProfile(), err)
	}
	if p.ClusterListener.String() != "169.254.10.11" || !p.Network.Manage || len(p.ClusterDNS) != 1 || p.ClusterDNS[0].String() != "10.0.0.10:53" {
		t.Errorf("profile decoded as %+v", p)
	}
}

func TestCoreDNSCorefile(t *testing.T) {
	cf := coreDNSCorefile("coredns-a", 30)
	for _, want := range []string{"nsid coredns-a", "forward . 192.0.2.53:53", "cache 30", "rcode NXDOMAIN", "prometheus 127.0.0.1:9153"} {
		if !strings.Contains(cf, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, cf)
		}
	}
}

func TestPlanPinning(t *testing.T) {
	if p := planPinning(false); p.load != "" || p.servers != "" || !strings.Contains(p.note, "not pinned") {
		t.Errorf("pinning off: %+v", p)
	}
	p := planPinning(true)
	if runtime.NumCPU() < 2 {
		if p.load != "" || !strings.Contains(p.note, "not pinned") {
			t.Errorf("%d CPU: %+v, want no pinning", runtime.NumCPU(), p)
		}
		return
	}
	if p.load == "" || p.servers == "" || p.load == p.servers || p.loadCPU == p.srvCPU {
		t.Errorf("%d CPUs: %+v, want two different CPUs", runtime.NumCPU(), p)
	}
	if l := readCPU("cpu" + p.servers); l.total == 0 {
		t.Errorf("no /proc/stat line for cpu%s", p.servers)
	}
}

func TestCPUTimesShares(t *testing.T) {
	before := cpuTimes{busy: 100, total: 1000, steal: 10}
	after := cpuTimes{busy: 400, total: 2000, steal: 60}
	if got := after.busySince(before); got != 0.3 {
		t.Errorf("busy %v, want 0.3", got)
	}
	if got := after.stealSince(before); got != 0.05 {
		t.Errorf("steal %v, want 0.05", got)
	}
	if got := before.stealSince(after); got != 0 {
		t.Errorf("steal going backwards %v, want 0", got)
	}
	// The machine's own /proc/stat parses, steal within total.
	if c := readCPU("cpu"); c.total <= 0 || c.steal < 0 || c.steal > c.total {
		t.Errorf("readCPU(cpu) = %+v", c)
	}
}

func TestParseAutogroup(t *testing.T) {
	group, nice, ok, err := parseAutogroup("/autogroup-274 nice -5\n")
	if err != nil || !ok || group != "/autogroup-274" || nice != -5 {
		t.Errorf("parseAutogroup(in a group) = %q, %d, %v, %v", group, nice, ok, err)
	}
	// A task in init's session (as CI runs the lab) reads an empty file:
	// not an error.
	if _, _, ok, err := parseAutogroup(""); ok || err != nil {
		t.Errorf("parseAutogroup(empty) = ok %v, err %v; want not in a group, no error", ok, err)
	}
	for _, bad := range []string{"garbage", "/autogroup-1 nice x", "/autogroup-1 prio 0"} {
		if _, _, _, err := parseAutogroup(bad); err == nil {
			t.Errorf("parseAutogroup(%q) gave no error", bad)
		}
	}
}
