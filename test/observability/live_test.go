package observability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

// TestLiveEndpoint runs localdns with a 5 s cache, sends misses, hits (UDP,
// answered at the socket, and TCP, through CoreDNS), junk names, then takes
// the cluster upstream down and brings it back, and checks after each step
// that the live endpoint's counters moved by exactly what was sent, that
// /health, /ready and /status (and `localdns status`) say what happened, and
// that the cache snapshot survives a restart. With Prometheus installed, a
// real Prometheus scrapes throughout and the alerts' conditions are evaluated
// on it. The subtests after the first check the shipped alerts and dashboard
// and lint the metrics against the endpoint the traffic left behind.
func TestLiveEndpoint(t *testing.T) {
	r := newRig(t)
	// A real Prometheus scrapes the endpoint throughout, when installed, to
	// evaluate the alerts' expressions on what localdns really exports. It
	// starts first: its first scrape comes ~5 s after its start.
	r.prom = startPrometheus(t, r.metrics)
	if r.prom == nil {
		t.Log("prometheus not installed (Debian package prometheus): alert expressions are not evaluated")
	}
	r.start(t)
	if !t.Run("counters move", func(t *testing.T) { r.trafficAndOutage(t) }) {
		return
	}
	final := r.scrape(t)
	t.Run("server labels are the listeners", func(t *testing.T) { checkServerLabels(t, final, r) })
	t.Run("alerts and dashboard metrics exist", func(t *testing.T) { checkArtifactMetrics(t, final) })
	t.Run("promlint", func(t *testing.T) { lintScrape(t, final) })
	t.Run("promtool check metrics", func(t *testing.T) { promtoolCheckMetrics(t, final) })
	t.Run("localdns status", func(t *testing.T) { r.checkStatusCommand(t) })
	t.Run("Prometheus evaluates the dashboard and alerts", func(t *testing.T) { r.checkWithPrometheus(t) })
	t.Run("snapshot survives a restart", func(t *testing.T) { r.checkSnapshot(t) })
}

// nodeServer and podsServer are the server label values of the listeners,
// as CoreDNS writes them.
func (r *rig) nodeServer() string { return "dns://" + r.node }
func (r *rig) podsServer() string { return "dns://" + r.pods }

// delta is the expected change of one sum of samples between two scrapes:
// over the whole endpoint, or over one listener IP (ip set).
type delta struct {
	name    string
	labels  []string
	ip      string
	want    float64
	atLeast bool
	// loopZone adds the loop plugin's own queries on listener ip in this
	// zone ("" for every zone) to want. loop sends a HINFO query through
	// each server block at start and again whenever one went unanswered,
	// so some arrive while the tests run; they are counted like any query.
	loopZone *string
}

func (d delta) of(s scrape) float64 {
	if d.ip == "" {
		return s.value(d.name, d.labels...)
	}
	return s.listenerValue(d.name, d.ip, d.labels...)
}

func (d delta) wanted(before, after scrape) float64 {
	if d.loopZone == nil {
		return d.want
	}
	loop := delta{name: "coredns_dns_requests_total", labels: []string{"type", "other"}, ip: d.ip}
	if *d.loopZone != "" {
		loop.labels = append(loop.labels, "zone", *d.loopZone)
	}
	return d.want + loop.of(after) - loop.of(before)
}

func (d delta) String() string {
	where := ""
	if d.ip != "" {
		where = " on listener " + d.ip
	}
	return fmt.Sprintf("%s%v%s", d.name, d.labels, where)
}

func zone(z string) *string { return &z }

// expect scrapes until every delta since before is what it should be, or
// 2 s passed (CoreDNS counts a query after it wrote the answer, so the
// last one may be missing from a scrape taken right after it), and reports
// those that are not. It returns the last scrape.
func (r *rig) expect(t *testing.T, step string, before scrape, ds ...delta) scrape {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		after := r.scrape(t)
		var bad []string
		for _, d := range ds {
			got, want := d.of(after)-d.of(before), d.wanted(before, after)
			if d.atLeast && got < want || !d.atLeast && got != want {
				op := "=="
				if d.atLeast {
					op = ">="
				}
				bad = append(bad, fmt.Sprintf("%s: %s moved by %v, want %s %v", step, d, got, op, want))
			}
		}
		if len(bad) == 0 {
			return after
		}
		if time.Now().After(deadline) {
			for _, b := range bad {
				t.Error(b)
			}
			return after
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listenerValue sums name over the series of one listener IP, whatever the
// port in their server label (checkServerLabels checks the label itself).
func (s scrape) listenerValue(name, ip string, labels ...string) float64 {
	var sum float64
	for _, m := range s.families[name].GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if l.GetName() == "server" && strings.HasPrefix(l.GetValue(), "dns://"+ip+":") {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func (r *rig) expectA(t *testing.T, network, listener, name, want string) *dns.Msg {
	t.Helper()
	m := testdns.Query(t, network, listener, name, dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("%s over %s on %s: %s with %d answers", name, network, listener, dns.RcodeToString[m.Rcode], len(m.Answer))
	}
	if a, ok := m.Answer[0].(*dns.A); !ok || a.A.String() != want {
		t.Fatalf("%s on %s: answer %v, want A %s", name, listener, m.Answer[0], want)
	}
	return m
}

const (
	clusterAnswer = "192.0.2.10"
	vnetAnswer    = "192.0.2.20"
)

func (r *rig) trafficAndOutage(t *testing.T) {
	external := []string{"ext-1.example.com.", "ext-2.example.com.", "ext-3.example.com."}
	services := []string{"svc-1.default.svc.cluster.local.", "svc-2.default.svc.cluster.local.", "svc-3.default.svc.cluster.local."}
	n := float64(len(external))

	s0 := r.scrape(t)
	all := zone("")

	// Misses: each name once, on the listener that routes it.
	cachedAt := time.Now()
	for _, name := range external {
		r.expectA(t, "udp", r.node, name, vnetAnswer)
	}
	for _, name := range services {
		r.expectA(t, "udp", r.pods, name, clusterAnswer)
	}
	for _, name := range external {
		if c := r.vnet.Count(name); c != 1 {
			t.Errorf("%s reached VNet DNS %d times, want 1", name, c)
		}
	}
	for _, name := range services {
		if c := r.cluster.Count(name); c != 1 {
			t.Errorf("%s reached cluster DNS %d times, want 1", name, c)
		}
	}
	s1 := r.expect(t, "misses", s0,
		delta{name: "localdns_cache_misses_total", ip: r.nodeIP, want: n, loopZone: all},
		delta{name: "localdns_cache_misses_total", ip: r.podsIP, want: n, loopZone: all},
		delta{name: "localdns_cache_hits_total", want: 0},
		delta{name: "localdns_fastpath_answers_total", want: 0},
		delta{name: "coredns_dns_requests_total", labels: []string{"type", "A"}, ip: r.nodeIP, want: n},
		delta{name: "coredns_dns_requests_total", labels: []string{"type", "A"}, ip: r.podsIP, want: n},
		delta{name: "localdns_upstream_requests_total", labels: []string{"group", "vnet"}, want: n, atLeast: true},
		delta{name: "localdns_upstream_requests_total", labels: []string{"group", "cluster"}, want: n, atLeast: true},
		delta{name: "localdns_upstream_request_duration_seconds", labels: []string{"group", "vnet", "rcode", "NOERROR"}, want: n, atLeast: true},
		delta{name: "localdns_upstream_request_duration_seconds", labels: []string{"group", "cluster", "rcode", "NOERROR"}, want: n, atLeast: true},
		delta{name: "coredns_dns_request_duration_seconds", want: 2 * n, atLeast: true},
	)
	if e := s1.value("localdns_cache_entries"); e < 2*n {
		t.Errorf("localdns_cache_entries = %v after %v misses", e, 2*n)
	}
	if b, budget := s1.value("localdns_cache_size_bytes"), s1.value("localdns_cache_budget_bytes"); b <= 0 || budget <= 0 || b > budget {
		t.Errorf("cache size %v of budget %v", b, budget)
	}

	// Hits over UDP are answered at the socket: the fast-path and hit
	// counters move, CoreDNS's request counter does not, no upstream is asked.
	for _, name := range external {
		r.expectA(t, "udp", r.node, name, vnetAnswer)
	}
	for _, name := range services {
		r.expectA(t, "udp", r.pods, name, clusterAnswer)
	}
	var hits []delta
	for _, ip := range []string{r.nodeIP, r.podsIP} {
		hits = append(hits,
			delta{name: "localdns_fastpath_answers_total", ip: ip, want: n},
			delta{name: "localdns_cache_hits_total", ip: ip, want: n},
			delta{name: "localdns_cache_misses_total", ip: ip, want: 0, loopZone: all},
			delta{name: "coredns_dns_requests_total", labels: []string{"type", "A"}, ip: ip, want: 0})
	}
	s2 := r.expect(t, "UDP hits", s1, hits...)
	// Hits over TCP go through CoreDNS.
	for _, name := range external {
		r.expectA(t, "tcp", r.node, name, vnetAnswer)
	}
	s3 := r.expect(t, "TCP hits", s2,
		delta{name: "localdns_fastpath_answers_total", want: 0},
		delta{name: "localdns_cache_hits_total", ip: r.nodeIP, want: n},
		delta{name: "coredns_dns_requests_total", labels: []string{"proto", "tcp", "type", "A"}, ip: r.nodeIP, want: n},
	)

	// Junk search-path names: NXDOMAIN from the junk plugin, per rule.
	junk := []string{"a.b.c.d.internal.cloudapp.net.", "x.reddog.microsoft.com."}
	for _, name := range junk {
		if m := testdns.Query(t, "udp", r.node, name, dns.TypeA); m.Rcode != dns.RcodeNameError {
			t.Errorf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[m.Rcode])
		}
	}
	r.expect(t, "junk", s3,
		delta{name: "localdns_junk_answers_total", labels: []string{"rule", "min_labels:internal.cloudapp.net."}, ip: r.nodeIP, want: 1},
		delta{name: "localdns_junk_answers_total", labels: []string{"rule", "zone:reddog.microsoft.com."}, ip: r.nodeIP, want: 1},
		delta{name: "coredns_dns_responses_total", labels: []string{"rcode", "NXDOMAIN", "zone", "."}, ip: r.nodeIP, want: 2},
		delta{name: "localdns_cache_misses_total", ip: r.nodeIP, want: 0, loopZone: all},
	)
	// Neither the hits nor the junk names reached an upstream.
	for _, name := range append(append(external, services...), junk...) {
		want := 1
		if slices.Contains(junk, name) {
			want = 0
		}
		if got := r.vnet.Count(name) + r.cluster.Count(name); got != want {
			t.Errorf("%s reached the upstreams %d times, want %d", name, got, want)
		}
	}

	// Outage: the cluster DNS stops answering. The health gauge flips, /ready
	// says why, the cluster names (expired by now) are answered stale, a new
	// cluster name fails fast, a new external name fails over to VNet DNS.
	if r.prom != nil {
		// Prometheus must have samples from before the outage to see the
		// counters rise.
		waitFor(t, 15*time.Second, "2 scrapes of localdns by Prometheus", func() bool {
			n, err := r.prom.query(`count_over_time(up{job="localdns"}[1m]) >= 2`)
			return err == nil && n == 1
		})
	}
	r.cluster.Set(testdns.Silent)
	waitFor(t, 10*time.Second, "localdns_upstream_healthy{group=cluster} 0", func() bool {
		s := r.scrape(t)
		return s.series("localdns_upstream_healthy", "group", "cluster") == 1 && s.value("localdns_upstream_healthy", "group", "cluster") == 0
	})
	s5 := r.scrape(t)
	if v := s5.value("localdns_upstream_healthy", "group", "vnet"); v != 1 {
		t.Errorf("vnet upstream healthy = %v during the cluster outage, want 1", v)
	}
	if code, body := r.get(t, "/health"); code != http.StatusOK {
		t.Errorf("/health during an upstream outage: %d %q, want 200", code, body)
	}
	code, body := r.get(t, "/ready")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "upstream group cluster: no healthy upstream") {
		t.Errorf("/ready with the cluster group down: %d %q, want 503 naming the group", code, body)
	}
	st := r.status(t)
	if st.Ready || len(st.NotReady) == 0 {
		t.Errorf("/status with the cluster group down: ready %v, reasons %q", st.Ready, st.NotReady)
	}
	for _, u := range st.Upstreams {
		if want := u.Group != "cluster"; u.Healthy != want {
			t.Errorf("/status: upstream %s/%s healthy %v, want %v", u.Group, u.Upstream, u.Healthy, want)
		}
	}
	out, exit := r.runStatus(t)
	t.Logf("localdns status during the cluster DNS outage:\n%s", out)
	if exit != 1 || !strings.Contains(out, "NOT READY") || !strings.Contains(out, "upstream group cluster") {
		t.Errorf("localdns status with the cluster group down: exit %d, output:\n%s", exit, out)
	}

	time.Sleep(time.Until(cachedAt.Add(ttl + 500*time.Millisecond)))
	for _, name := range services {
		m := r.expectA(t, "udp", r.pods, name, clusterAnswer)
		if ttl := m.Answer[0].Header().Ttl; ttl != 30 {
			t.Errorf("stale answer for %s has TTL %d, want 30 (RFC 8767)", name, ttl)
		}
	}
	if m := testdns.Query(t, "udp", r.pods, "new.default.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("uncached cluster name with the cluster group down: %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	r.expectA(t, "udp", r.pods, "failover.example.org.", vnetAnswer)
	r.expect(t, "outage", s5,
		delta{name: "localdns_cache_stale_answers_total", ip: r.podsIP, want: n},
		delta{name: "localdns_fastpath_answers_total", ip: r.podsIP, want: n}, // stale answers too
		delta{name: "localdns_cache_hits_total", want: 0},
		delta{name: "localdns_upstream_fast_failures_total", labels: []string{"group", "cluster"}, want: 1, atLeast: true},
		delta{name: "localdns_upstream_failovers_total", labels: []string{"from", "cluster", "to", "vnet"}, want: 1, loopZone: zone(".")},
		delta{name: "coredns_dns_responses_total", labels: []string{"rcode", "SERVFAIL", "zone", "cluster.local."}, ip: r.podsIP, want: 1, loopZone: zone("cluster.local.")},
	)
	// The background refreshes of the stale entries cannot succeed.
	waitFor(t, 5*time.Second, "refresh failures counted", func() bool {
		return r.scrape(t).listenerValue("localdns_cache_refresh_failures_total", r.podsIP)-s5.listenerValue("localdns_cache_refresh_failures_total", r.podsIP) >= 1
	})

	if r.prom != nil {
		series := r.waitAlert(t, "LocalDNSUpstreamGroupDown", true)
		if len(series) != 1 || series[0]["group"] != "cluster" {
			t.Errorf("LocalDNSUpstreamGroupDown holds for %v, want group cluster only", series)
		}
		r.waitAlert(t, "LocalDNSServingStale", true)
	}

	// Recovery.
	r.cluster.Set(testdns.Answer)
	waitFor(t, 10*time.Second, "localdns_upstream_healthy{group=cluster} 1", func() bool {
		return r.scrape(t).value("localdns_upstream_healthy", "group", "cluster") == 1
	})
	waitFor(t, 5*time.Second, "/ready 200 after recovery", func() bool {
		code, _ := r.get(t, "/ready")
		return code == http.StatusOK
	})
	if st := r.status(t); !st.Ready {
		t.Errorf("/status after recovery: not ready: %q", st.NotReady)
	}
	if r.prom != nil {
		r.waitAlert(t, "LocalDNSUpstreamGroupDown", false)
	}
	// The watchdog's self-probe (every second with WatchdogSec=5s) ran and
	// passed, and each pass pinged systemd.
	r.expect(t, "watchdog", s0,
		delta{name: "localdns_watchdog_probe_duration_seconds", want: 2, atLeast: true},
		delta{name: "localdns_watchdog_probe_failures_total", want: 0},
	)
	if r.notify.Count("READY=1") < 1 || r.notify.Count("WATCHDOG=1") < 2 {
		t.Errorf("sd_notify: %d READY=1, %d WATCHDOG=1; want READY and watchdog pings", r.notify.Count("READY=1"), r.notify.Count("WATCHDOG=1"))
	}

	// /status counts every query answered, as the dashboard does.
	s7 := r.scrape(t)
	if q := r.status(t).Queries; q < s7.value("coredns_dns_requests_total")+s7.value("localdns_fastpath_answers_total") {
		t.Errorf("/status queriesTotal %v below the endpoint's requests + fast-path answers", q)
	}
}

// statusReport is the part of /status the tests read.
type statusReport struct {
	Ready     bool     `json:"ready"`
	NotReady  []string `json:"notReady"`
	Queries   float64  `json:"queriesTotal"`
	Listeners []struct {
		Addr, Network string
		OK            bool
	} `json:"listeners"`
	Upstreams []struct {
		Group, Upstream string
		Healthy         bool
	} `json:"upstreams"`
	Cache struct {
		Entries, Hits, Misses    float64
		Stale                    float64 `json:"staleAnswers"`
		SnapshotRestoredEntries  float64 `json:"snapshotRestoredEntries"`
		SnapshotTimestampSeconds float64 `json:"snapshotTimestampSeconds"`
	} `json:"cache"`
	HitRatio float64 `json:"hitRatio"`
	QPS      float64 `json:"qps"`
}

func (r *rig) status(t *testing.T) statusReport {
	t.Helper()
	code, body := r.get(t, "/status")
	if code != http.StatusOK {
		t.Fatalf("/status: %d %s", code, body)
	}
	var st statusReport
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	if len(st.Listeners) != 4 {
		t.Errorf("/status lists %d listener probes, want 4 (2 addresses x udp, tcp)", len(st.Listeners))
	}
	return st
}

// runStatus runs `localdns status --config profile` and returns its output
// and exit code.
func (r *rig) runStatus(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"status", "--config", r.profile, "--interval", "300ms"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("localdns status: %v", err)
	}
	return out.String(), 0
}

func (r *rig) checkStatusCommand(t *testing.T) {
	// Some load while status measures the rate: hits at the socket.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &dns.Client{Net: "udp", Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion("ext-1.example.com.", dns.TypeA)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Exchange(m, r.node)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	out, exit := r.runStatus(t)
	jsonOut, jsonExit := r.runStatus(t, "--json")
	close(stop)
	<-done
	t.Logf("localdns status:\n%s", out)
	if exit != 0 {
		t.Errorf("localdns status exit %d, want 0 (ready)", exit)
	}
	for _, want := range []string{"localdns READY", r.node, r.pods, "UPSTREAM", "cluster", "vnet", "queries/s", "cache hit ratio", "stale answers"} {
		if !strings.Contains(out, want) {
			t.Errorf("localdns status output lacks %q", want)
		}
	}
	if jsonExit != 0 {
		t.Errorf("localdns status --json exit %d", jsonExit)
	}
	var st statusReport
	if err := json.Unmarshal([]byte(jsonOut), &st); err != nil {
		t.Fatalf("localdns status --json: %v\n%s", err, jsonOut)
	}
	if !st.Ready || st.QPS <= 0 || st.HitRatio <= 0 || st.HitRatio > 1 || st.Cache.Stale < 3 {
		t.Errorf("localdns status --json: ready %v, qps %v, hit ratio %v, stale %v", st.Ready, st.QPS, st.HitRatio, st.Cache.Stale)
	}
}

// checkSnapshot stops localdns (it writes the snapshot on the way out),
// starts it again and checks that the restored entries are counted.
func (r *rig) checkSnapshot(t *testing.T) {
	before := r.scrape(t).value("localdns_cache_entries")
	r.d.stop(t)
	if fi, err := os.Stat(r.snapshot); err != nil || fi.Size() == 0 {
		t.Fatalf("no cache snapshot after SIGTERM: %v", err)
	}
	r.start(t)
	s := r.scrape(t)
	restored := s.value("localdns_cache_snapshot_restored_entries")
	if restored < 1 || restored > before {
		t.Errorf("localdns_cache_snapshot_restored_entries = %v, want 1..%v (entries before the restart)", restored, before)
	}
	if st := r.status(t); st.Cache.SnapshotRestoredEntries != restored {
		t.Errorf("/status snapshotRestoredEntries %v, endpoint %v", st.Cache.SnapshotRestoredEntries, restored)
	}
	// A restored name, expired by now, is answered stale (TTL 30) from the
	// snapshot's entry; a miss would carry the cache's 5 s TTL.
	m := r.expectA(t, "tcp", r.node, "ext-2.example.com.", vnetAnswer)
	if ttl := m.Answer[0].Header().Ttl; ttl != 30 {
		t.Errorf("restored name answered with TTL %d, want the stale TTL 30", ttl)
	}
}
