package upstream

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestParse(t *testing.T) {
	c := caddy.NewTestController("dns", `upstream {
		to 10.0.0.10:53 10.0.0.11
		failover 168.63.129.16:53
		never_failover corp.internal in-addr.arpa
		group_names cluster vnet
		protocol force_tcp
		policy round_robin
		max_concurrent 50
		health_check 2s no_rec domain example.org
		max_fails 4
		spread 25ms
	}`)
	cfg, err := parseConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.10:53", "10.0.0.11:53"}; !slices.Equal(cfg.to, want) {
		t.Errorf("to: got %v, want %v", cfg.to, want)
	}
	if want := []string{"168.63.129.16:53"}; !slices.Equal(cfg.failover, want) {
		t.Errorf("failover: got %v, want %v", cfg.failover, want)
	}
	if want := []string{"corp.internal.", "in-addr.arpa."}; !slices.Equal(cfg.neverFailover, want) {
		t.Errorf("never_failover: got %v, want %v (given zones replace the defaults)", cfg.neverFailover, want)
	}
	if cfg.routeName != "cluster" || cfg.failoverName != "vnet" {
		t.Errorf("group_names: got %s %s", cfg.routeName, cfg.failoverName)
	}
	if !cfg.forceTCP || cfg.policy.String() != "round_robin" || cfg.maxConcurrent != 50 {
		t.Errorf("protocol/policy/max_concurrent: got %v %s %d", cfg.forceTCP, cfg.policy, cfg.maxConcurrent)
	}
	if r, f := cfg.probeDomain(true), cfg.probeDomain(false); r != "example.org." || f != "." {
		t.Errorf("probe domains with domain set: route %q, failover %q; want example.org. and .", r, f)
	}
	if cfg.hcInterval != 2*time.Second || !cfg.hcNoRec || cfg.hcDomain != "example.org." || cfg.maxFails != 4 || cfg.spread != 25*time.Millisecond {
		t.Errorf("health_check/max_fails/spread: got %s %v %s %d %v", cfg.hcInterval, cfg.hcNoRec, cfg.hcDomain, cfg.maxFails, cfg.spread)
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := parseConfig(caddy.NewTestController("dns", "upstream {\n to 10.0.0.10\n}"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.forceTCP || cfg.policy.String() != "sequential" || cfg.maxConcurrent != 1000 ||
		cfg.hcInterval != 500*time.Millisecond || cfg.maxFails != 2 || cfg.spread != time.Second || cfg.pool != 16 || cfg.timeout != 2*time.Second ||
		cfg.routeName != "route" || cfg.failoverName != "failover" || len(cfg.failover) != 0 {
		t.Errorf("defaults: got %+v", cfg)
	}
	if r, f := cfg.probeDomain(true), cfg.probeDomain(false); r != "." || f != "." {
		t.Errorf("probe domains without failover: route %q, failover %q; want . and .", r, f)
	}
	cfg.failover = []string{"10.0.0.53:53"}
	if r, f := cfg.probeDomain(true), cfg.probeDomain(false); r != "cluster.local." || f != "." {
		t.Errorf("probe domains with failover: route %q, failover %q; want cluster.local. and .", r, f)
	}
	cfg, err = parseConfig(caddy.NewTestController("dns", "upstream {\n to 10.0.0.10\n protocol force_tcp\n}"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.spread != time.Second {
		t.Errorf("spread default with force_tcp: got %s, want 1s", cfg.spread)
	}
	if !slices.Equal(cfg.neverFailover, defaultNeverFailover()) {
		t.Errorf("never_failover default: got %v", cfg.neverFailover)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"upstream", "'to' is required"},
		{"upstream {\n}", "'to' is required"},
		{"upstream 10.0.0.10", "Wrong argument count"},
		{"upstream {\n to\n}", "Wrong argument count"},
		{"upstream {\n to tls://10.0.0.10\n}", "only plain DNS"},
		{"upstream {\n to not-an-ip\n}", "not an IP address or file"},
		{"upstream {\n to 10.0.0.10\n protocol udp\n}", "unknown \"udp\""},
		{"upstream {\n to 10.0.0.10\n policy fastest\n}", "unknown \"fastest\""},
		{"upstream {\n to 10.0.0.10\n max_concurrent -1\n}", "max_concurrent"},
		{"upstream {\n to 10.0.0.10\n health_check 0s\n}", "positive duration"},
		{"upstream {\n to 10.0.0.10\n health_check 1s domain\n}", "domain needs a name"},
		{"upstream {\n to 10.0.0.10\n try_unhealthy always\n}", "Wrong argument count"},
		{"upstream {\n to 10.0.0.10\n spread maybe\n}", "off, query or a positive duration"},
		{"upstream {\n to 10.0.0.10\n spread 0s\n}", "off, query or a positive duration"},
		{"upstream {\n to 10.0.0.10\n pool 0\n}", "pool: want a number of sockets"},
		{"upstream {\n to 10.0.0.10\n pool 1 2\n}", "Wrong argument count"},
		{"upstream {\n to 10.0.0.10\n timeout 1ms\n}", "timeout: want a duration of at least 10ms"},
		{"upstream {\n to 10.0.0.10\n timeout soon\n}", "timeout: want a duration"},
		{"upstream {\n to 10.0.0.10\n failover 10.0.0.11\n group_names x x\n}", "must differ"},
		{"upstream {\n to 10.0.0.10\n bogus\n}", "unknown property"},
		{"upstream {\n to 10.0.0.10\n}\nupstream {\n to 10.0.0.11\n}", "only one upstream"},
	} {
		_, err := parseConfig(caddy.NewTestController("dns", tc.input))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.input, err, tc.want)
		}
	}
}

func TestCheckLoop(t *testing.T) {
	for _, tc := range []struct {
		upstream string
		hosts    []string
		port     string
		loop     bool
	}{
		{"169.254.10.10:53", []string{"169.254.10.10", "169.254.10.11"}, "53", true},
		{"169.254.10.11:53", []string{"169.254.10.10", "169.254.10.11"}, "53", true},
		{"169.254.10.10:5353", []string{"169.254.10.10"}, "53", false},
		{"10.0.0.10:53", []string{"169.254.10.10"}, "53", false},
		{"127.0.0.1:53", []string{""}, "53", true},
		{"127.0.0.1:53", []string{"0.0.0.0"}, "53", true},
		{"[::1]:53", []string{"::"}, "53", true},
		{"10.0.0.10:53", []string{""}, "53", false},
		{"[fe80::1]:53", []string{"fe80::1%eth0"}, "53", true},
	} {
		err := checkLoop(tc.upstream, tc.hosts, tc.port)
		if (err != nil) != tc.loop {
			t.Errorf("checkLoop(%s, %v, %s): got %v, want loop=%v", tc.upstream, tc.hosts, tc.port, err, tc.loop)
		}
	}
}

func TestPolicies(t *testing.T) {
	ms := []*member{{addr: "a"}, {addr: "b"}, {addr: "c"}}
	first := func(p policy) map[string]int {
		n := map[string]int{}
		for range 300 {
			l := p.List(ms)
			if len(l) != 3 {
				t.Fatalf("%s: list of %d", p, len(l))
			}
			n[l[0].addr]++
		}
		return n
	}
	if n := first(sequential{}); n["a"] != 300 {
		t.Errorf("sequential: first picks %v, want always a", n)
	}
	if n := first(&roundRobin{}); n["a"] != 100 || n["b"] != 100 || n["c"] != 100 {
		t.Errorf("round_robin: first picks %v, want 100 each", n)
	}
	if n := first(random{}); n["a"] < 50 || n["b"] < 50 || n["c"] < 50 {
		t.Errorf("random: first picks %v, want each well used", n)
	}
	if ms[0].addr != "a" || ms[1].addr != "b" || ms[2].addr != "c" {
		t.Errorf("a policy reordered the group's own list")
	}
}

func TestHealthGaugeAggregatesProbes(t *testing.T) {
	hs := &healthSet{entries: map[healthKey]*health{}}
	set := healthSettings{interval: time.Second, maxfails: 2}
	root := hs.get(healthKey{"agg", "192.0.2.99:53", "."}, set)
	zone := hs.get(healthKey{"agg", "192.0.2.99:53", "cluster.local."}, set)
	if hs.get(healthKey{"agg", "192.0.2.99:53", "."}, set) != root {
		t.Fatal("same key, different health state")
	}
	// series returns the values of the gauge series of group "agg".
	series := func() []float64 {
		ch := make(chan prometheus.Metric, 1000)
		healthy.Collect(ch)
		close(ch)
		var vs []float64
		for m := range ch {
			var d dto.Metric
			if err := m.Write(&d); err != nil {
				t.Fatal(err)
			}
			for _, l := range d.GetLabel() {
				if l.GetName() == "group" && l.GetValue() == "agg" {
					vs = append(vs, d.GetGauge().GetValue())
				}
			}
		}
		return vs
	}
	gauge := func() float64 {
		vs := series()
		if len(vs) != 1 {
			t.Fatalf("%d gauge series for the upstream, want 1", len(vs))
		}
		return vs[0]
	}

	root.fails.Store(3)
	root.publish()
	if !zone.healthy.Load() || root.healthy.Load() || gauge() != 1 {
		t.Errorf("one probe failing: gauge %v, want 1 (the upstream still answers the other)", gauge())
	}
	zone.fails.Store(3)
	zone.publish()
	if gauge() != 0 {
		t.Errorf("both probes failing: gauge %v, want 0", gauge())
	}
	root.answered()
	root.publish()
	if gauge() != 1 || root.down() {
		t.Errorf("after an answered query: gauge %v, down %v; want 1, false", gauge(), root.down())
	}
	hs.stop()
	zone.publish()
	if n := len(series()); n != 0 {
		t.Errorf("after stop: %d gauge series left, want 0", n)
	}
}
