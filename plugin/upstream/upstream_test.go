package upstream_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

func upstreamBlock(directives ...string) string {
	return "\tupstream {\n\t\t" + lines(directives...) + "\n\t}"
}

func TestRouteAndProtocol(t *testing.T) {
	a := startFake(t, "192.0.2.1")
	for _, tc := range []struct {
		protocol         string
		client           string
		wantUDP, wantTCP int
	}{
		{"prefer_udp", "udp", 1, 0},
		{"prefer_udp", "tcp", 1, 0},
		{"force_tcp", "udp", 0, 1},
		{"force_tcp", "tcp", 0, 1},
	} {
		t.Run(tc.protocol+"/"+tc.client, func(t *testing.T) {
			srv := startLocaldns(t, upstreamBlock("to "+a.addr, "protocol "+tc.protocol, "health_check 10s"))
			u0, t0 := a.count()
			r, _ := ask(t, srv, tc.client, "svc.default.svc.cluster.local", dns.TypeA)
			if got := answerOf(r); got != "192.0.2.1" {
				t.Fatalf("answer: got %s, want 192.0.2.1", got)
			}
			u1, t1 := a.count()
			if u1-u0 != tc.wantUDP || t1-t0 != tc.wantTCP {
				t.Errorf("upstream saw udp=%d tcp=%d, want udp=%d tcp=%d", u1-u0, t1-t0, tc.wantUDP, tc.wantTCP)
			}
		})
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	a := startFake(t, "192.0.2.1")
	a.truncate.Store(true)
	srv := startLocaldns(t, upstreamBlock("to "+a.addr, "protocol prefer_udp"))
	r, _ := ask(t, srv, "tcp", "big.example.com", dns.TypeA)
	if got := answerOf(r); got != "192.0.2.1" {
		t.Fatalf("answer: got %s, want the TCP answer 192.0.2.1", got)
	}
	if u, tc := a.count(); u != 1 || tc != 1 {
		t.Errorf("upstream saw udp=%d tcp=%d, want 1 and 1", u, tc)
	}
}

func TestPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		check  func(na, nb int) bool
		want   string
	}{
		{"sequential", func(na, nb int) bool { return na == 40 && nb == 0 }, "all on the first"},
		{"round_robin", func(na, nb int) bool { return na == 20 && nb == 20 }, "20/20"},
		{"random", func(na, nb int) bool { return na >= 8 && nb >= 8 && na+nb == 40 }, "both used"},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			a, b := startFake(t, "192.0.2.1"), startFake(t, "192.0.2.2")
			srv := startLocaldns(t, upstreamBlock("to "+a.addr+" "+b.addr, "policy "+tc.policy))
			for i := range 40 {
				ask(t, srv, "udp", fmt.Sprintf("n%d.example.com", i), dns.TypeA)
			}
			na, nb := len(a.seen()), len(b.seen())
			if !tc.check(na, nb) {
				t.Errorf("policy %s: first got %d, second %d; want %s", tc.policy, na, nb, tc.want)
			}
		})
	}
}

func TestMaxConcurrent(t *testing.T) {
	a := startFake(t, "192.0.2.1")
	hold := make(chan struct{})
	a.hold.Store(&hold)
	srv := startLocaldns(t, upstreamBlock("to "+a.addr, "max_concurrent 2"))
	before := metric(t, "localdns_upstream_max_concurrent_rejects_total")

	var wg sync.WaitGroup
	held := make([]*dns.Msg, 2)
	for i := range held {
		wg.Go(func() { held[i], _ = ask(t, srv, "udp", fmt.Sprintf("held%d.example.com", i), dns.TypeA) })
	}
	waitFor(t, 5*time.Second, "two queries in flight", func() bool { return a.inflight.Load() == 2 })

	for i := range 3 {
		r, took := ask(t, srv, "udp", fmt.Sprintf("excess%d.example.com", i), dns.TypeA)
		if r.Rcode != dns.RcodeRefused {
			t.Errorf("excess query %d: rcode %s, want REFUSED", i, dns.RcodeToString[r.Rcode])
		}
		if took > 100*time.Millisecond {
			t.Errorf("excess query %d took %s, want an immediate refusal", i, took)
		}
	}
	close(hold)
	wg.Wait()
	for i, r := range held {
		if answerOf(r) != "192.0.2.1" {
			t.Errorf("held query %d: got %s, want an answer", i, answerOf(r))
		}
	}
	if got := metric(t, "localdns_upstream_max_concurrent_rejects_total") - before; got != 3 {
		t.Errorf("max_concurrent_rejects_total grew by %v, want 3", got)
	}
}

// TestSpreadSourcePorts shows the mechanism behind the spread over CoreDNS
// pods: sequential UDP queries leave from the pool's sockets, each a source
// port (a conntrack flow): a fresh one per query with "spread query", at
// most pool sockets per socket lifetime with a duration, and at most pool
// sockets overall with "spread off". The kernel picks ephemeral ports at
// random, so a few per-query ports may repeat; queries pick sockets at
// random, so 40 queries over 4 sockets use all 4 but for a 4e-5 chance.
func TestSpreadSourcePorts(t *testing.T) {
	for _, tc := range []struct {
		spread, pool string
		min, max     int
	}{{"query", "16", 36, 40}, {"off", "1", 1, 1}, {"off", "4", 4, 4}, {"300ms", "4", 7, 8}} {
		t.Run(tc.spread+"/pool"+tc.pool, func(t *testing.T) {
			a := startFake(t, "192.0.2.1")
			srv := startLocaldns(t, upstreamBlock("to "+a.addr, "spread "+tc.spread, "pool "+tc.pool, "health_check 10s"))
			for i := range 40 {
				if i == 20 {
					time.Sleep(400 * time.Millisecond) // past a socket's lifetime
				}
				ask(t, srv, "udp", fmt.Sprintf("p%d.example.com", i), dns.TypeA)
			}
			if n := a.sourcePorts(); n < tc.min || n > tc.max {
				t.Errorf("spread %s, pool %s: 40 queries used %d source ports, want %d..%d", tc.spread, tc.pool, n, tc.min, tc.max)
			}
		})
	}
}

// TestHealthFastFailAndRecovery: silent upstreams are marked down by the
// health checks, then queries get SERVFAIL at once (never NXDOMAIN); when one
// upstream answers again it is used again.
func TestHealthFastFailAndRecovery(t *testing.T) {
	a, b := startFake(t, "192.0.2.1"), startFake(t, "192.0.2.2")
	srv := startLocaldns(t, upstreamBlock(
		"to "+a.addr+" "+b.addr,
		"group_names cluster vnet",
		"health_check 0.2s",
	))
	waitFor(t, 3*time.Second, "both upstreams healthy", func() bool {
		return healthyGauge(t, "cluster", a.addr) == 1 && healthyGauge(t, "cluster", b.addr) == 1
	})
	if r, _ := ask(t, srv, "udp", "web.default.svc.cluster.local", dns.TypeA); answerOf(r) != "192.0.2.1" {
		t.Fatalf("healthy: got %s, want 192.0.2.1", answerOf(r))
	}

	a.silent.Store(true)
	b.silent.Store(true)
	waitFor(t, 8*time.Second, "both upstreams down", func() bool {
		return markedDown(t, "cluster", a.addr) && markedDown(t, "cluster", b.addr)
	})
	fastBefore := metric(t, "localdns_upstream_fast_failures_total", "group", "cluster")
	for _, name := range []string{"web.default.svc.cluster.local", "www.example.com"} {
		r, took := ask(t, srv, "udp", name, dns.TypeA)
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s with all upstreams down: rcode %s, want SERVFAIL", name, dns.RcodeToString[r.Rcode])
		}
		if took > 100*time.Millisecond {
			t.Errorf("%s with all upstreams down took %s, want < 100ms", name, took)
		}
	}
	if got := metric(t, "localdns_upstream_fast_failures_total", "group", "cluster") - fastBefore; got != 2 {
		t.Errorf("fast_failures_total{group=cluster} grew by %v, want 2", got)
	}

	b.silent.Store(false)
	waitFor(t, 3*time.Second, "second upstream healthy again", func() bool { return healthyGauge(t, "cluster", b.addr) == 1 })
	if r, _ := ask(t, srv, "udp", "web.default.svc.cluster.local", dns.TypeA); answerOf(r) != "192.0.2.2" {
		t.Fatalf("after recovery: got %s, want 192.0.2.2 from the upstream that came back", answerOf(r))
	}
	if healthyGauge(t, "cluster", a.addr) != 0 {
		t.Errorf("the still silent upstream is reported healthy")
	}
}

// TestAnsweredQueriesKeepUpstreamUp: behind a service IP with one dead pod,
// probes fail now and then while queries get answers; the upstream must stay
// up while it answers, and go down when only the failing probes are left.
func TestAnsweredQueriesKeepUpstreamUp(t *testing.T) {
	a := startFake(t, "192.0.2.1")
	a.badProbe.Store(true)
	srv := startLocaldns(t, upstreamBlock("to "+a.addr, "group_names cluster", "health_check 0.05s"))
	end := time.Now().Add(time.Second)
	for i := 0; time.Now().Before(end); i++ {
		if r, _ := ask(t, srv, "udp", fmt.Sprintf("q%d.example.com", i), dns.TypeA); answerOf(r) != "192.0.2.1" {
			t.Fatalf("query %d: got %s, want an answer", i, answerOf(r))
		}
		if markedDown(t, "cluster", a.addr) { // no series before the first probe: not down
			t.Fatalf("marked down after %d answered queries", i+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, 2*time.Second, "down once only failing probes are left", func() bool { return markedDown(t, "cluster", a.addr) })
}

// TestProbeDoesNotDependOnVNet: cluster DNS forwards "." to VNet DNS; while
// VNet DNS is down a ". NS" probe of cluster DNS fails, but cluster DNS still
// answers cluster names. The route group is probed with the cluster domain,
// so it stays up.
func TestProbeDoesNotDependOnVNet(t *testing.T) {
	cluster := startFake(t, "10.244.0.10")
	cluster.badRoot.Store(true)
	vnet := startFake(t, "203.0.113.7")
	srv := startLocaldns(t, upstreamBlock(
		"to "+cluster.addr,
		"failover "+vnet.addr,
		"group_names cluster vnet",
		"health_check 0.05s",
	))
	waitFor(t, 3*time.Second, "probes of both groups", func() bool { return cluster.probes.Load() >= 5 && vnet.probes.Load() >= 5 })
	if healthyGauge(t, "cluster", cluster.addr) != 1 {
		t.Fatal("cluster DNS marked down because its root probe fails")
	}
	if r, _ := ask(t, srv, "udp", "web.default.svc.cluster.local", dns.TypeA); answerOf(r) != "10.244.0.10" {
		t.Errorf("cluster name: got %s, want the cluster answer", answerOf(r))
	}
}

// TestFailover: with the route group down, external names go to the failover
// group; names in the cluster domain and the reverse zones never do.
func TestFailover(t *testing.T) {
	cluster := startFake(t, "10.244.0.10")
	vnet := startFake(t, "203.0.113.7", "cluster.local.", "in-addr.arpa.", "ip6.arpa.")
	srv := startLocaldns(t, upstreamBlock(
		"to "+cluster.addr,
		"failover "+vnet.addr,
		"never_failover cluster.local in-addr.arpa ip6.arpa",
		"group_names cluster vnet",
		"health_check 0.2s",
	))
	if r, _ := ask(t, srv, "udp", "www.example.com", dns.TypeA); answerOf(r) != "10.244.0.10" {
		t.Fatalf("route group healthy: got %s, want the cluster answer", answerOf(r))
	}
	if n := len(vnet.seen()); n != 0 {
		t.Fatalf("failover group got %d queries while the route group was healthy", n)
	}

	cluster.silent.Store(true)
	waitFor(t, 8*time.Second, "cluster upstream down", func() bool { return markedDown(t, "cluster", cluster.addr) })
	foBefore := metric(t, "localdns_upstream_failovers_total", "from", "cluster", "to", "vnet")

	r, took := ask(t, srv, "udp", "www.example.com", dns.TypeA)
	if answerOf(r) != "203.0.113.7" {
		t.Errorf("external name with cluster down: got %s, want the VNet answer", answerOf(r))
	}
	if took > 100*time.Millisecond {
		t.Errorf("failover took %s, want no wait for the dead upstream", took)
	}
	if got := metric(t, "localdns_upstream_failovers_total", "from", "cluster", "to", "vnet") - foBefore; got != 1 {
		t.Errorf("failovers_total grew by %v, want 1", got)
	}

	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.default.svc.cluster.local", dns.TypeA},
		{"10.0.96.10.in-addr.arpa", dns.TypePTR},
		{"a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", dns.TypePTR},
	} {
		r, took := ask(t, srv, "udp", q.name, q.qtype)
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s with cluster down: rcode %s, want SERVFAIL (never NXDOMAIN)", q.name, dns.RcodeToString[r.Rcode])
		}
		if took > 100*time.Millisecond {
			t.Errorf("%s took %s, want a fast SERVFAIL", q.name, took)
		}
	}
	for _, name := range vnet.seen() {
		if dns.IsSubDomain("cluster.local.", name) || dns.IsSubDomain("arpa.", name) {
			t.Errorf("cluster-only name %s was sent to the failover group", name)
		}
	}

	// Both groups down: external names fail fast too.
	vnet.silent.Store(true)
	waitFor(t, 8*time.Second, "vnet upstream down", func() bool { return markedDown(t, "vnet", vnet.addr) })
	fastBefore := metric(t, "localdns_upstream_fast_failures_total", "group", "vnet")
	r, took = ask(t, srv, "udp", "www.example.com", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure || took > 100*time.Millisecond {
		t.Errorf("external name with both groups down: rcode %s after %s, want SERVFAIL within 100ms", dns.RcodeToString[r.Rcode], took)
	}
	if got := metric(t, "localdns_upstream_fast_failures_total", "group", "vnet") - fastBefore; got != 1 {
		t.Errorf("fast_failures_total{group=vnet} grew by %v, want 1", got)
	}
	vnet.silent.Store(false)

	cluster.silent.Store(false)
	waitFor(t, 3*time.Second, "cluster upstream back", func() bool { return healthyGauge(t, "cluster", cluster.addr) == 1 })
	if r, _ := ask(t, srv, "udp", "www.example.com", dns.TypeA); answerOf(r) != "10.244.0.10" {
		t.Errorf("after recovery: got %s, want the cluster answer again", answerOf(r))
	}
}

// TestFailoverAfterOneTimeout: before the health checks have marked a silent
// route upstream down, a name that may fail over waits for one try (half the
// 2 s deadline), not two, and is then answered by the failover group; a
// cluster name tries twice and gets SERVFAIL at the deadline.
func TestFailoverAfterOneTimeout(t *testing.T) {
	cluster := startFake(t, "10.244.0.10")
	cluster.silent.Store(true)
	vnet := startFake(t, "203.0.113.7", "cluster.local.")
	srv := startLocaldns(t, upstreamBlock(
		"to "+cluster.addr,
		"failover "+vnet.addr,
		"health_check 10s",
	))
	r, took := ask(t, srv, "udp", "www.example.com", dns.TypeA)
	if answerOf(r) != "203.0.113.7" {
		t.Errorf("external name: got %s, want the failover answer", answerOf(r))
	}
	if took < 900*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("external name took %s, want one try (~1s)", took)
	}
	if n := len(cluster.seen()); n != 1 {
		t.Errorf("route upstream got %d tries for the external name, want 1", n)
	}
	r, took = ask(t, srv, "udp", "web.default.svc.cluster.local", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("cluster name: rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if took < 1900*time.Millisecond || took > 2300*time.Millisecond {
		t.Errorf("cluster name took %s, want the 2s deadline", took)
	}
	if n := len(cluster.seen()); n != 3 {
		t.Errorf("route upstream got %d tries in all, want 1 + 2", n)
	}
}

// TestDeadlineBlackHole: upstreams that pass their health checks but never
// answer a query (issue 12 item 7: answered after 6 s, past the clients' 5 s
// retry). Every query gets SERVFAIL at the overall deadline, whether it may
// fail over (one try on the route group, then the failover group) or not,
// on the default 2 s deadline and on a configured one.
func TestDeadlineBlackHole(t *testing.T) {
	for _, tc := range []struct {
		timeout string
		want    time.Duration
	}{{"", 2 * time.Second}, {"500ms", 500 * time.Millisecond}} {
		t.Run("timeout="+tc.timeout, func(t *testing.T) {
			cluster := startFake(t, "10.244.0.10")
			vnet := startFake(t, "203.0.113.7", "cluster.local.")
			cluster.dropQueries.Store(true)
			vnet.dropQueries.Store(true)
			directives := []string{"to " + cluster.addr, "failover " + vnet.addr, "health_check 100ms"}
			if tc.timeout != "" {
				directives = append(directives, "timeout "+tc.timeout)
			}
			srv := startLocaldns(t, upstreamBlock(directives...))
			for _, name := range []string{"www.example.com", "web.default.svc.cluster.local"} {
				r, took := ask(t, srv, "udp", name, dns.TypeA)
				if r.Rcode != dns.RcodeServerFailure {
					t.Errorf("%s: rcode %s, want SERVFAIL", name, dns.RcodeToString[r.Rcode])
				}
				if took < tc.want-50*time.Millisecond || took > tc.want+300*time.Millisecond {
					t.Errorf("%s: SERVFAIL after %s, want the %s deadline", name, took, tc.want)
				}
			}
			if healthyGauge(t, "route", cluster.addr) != 1 || healthyGauge(t, "failover", vnet.addr) != 1 {
				t.Errorf("the black holes were marked down: the test did not measure the deadline")
			}
			if len(vnet.seen()) == 0 {
				t.Errorf("the external name never reached the failover group")
			}
		})
	}
}

// TestFailoverOnRefusedBeforeHealthCheck: an upstream whose port is closed
// fails a query at once (ICMP port unreachable); external names fail over
// right away, before the health checks have marked it down.
func TestFailoverOnRefusedBeforeHealthCheck(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	vnet := startFake(t, "203.0.113.7", "cluster.local.")
	srv := startLocaldns(t, upstreamBlock(
		"to "+closed,
		"failover "+vnet.addr,
		"health_check 10s",
	))
	r, took := ask(t, srv, "udp", "www.example.com", dns.TypeA)
	if answerOf(r) != "203.0.113.7" {
		t.Errorf("got %s, want the failover answer", answerOf(r))
	}
	if took > 100*time.Millisecond {
		t.Errorf("took %s, want an immediate failover", took)
	}
	r, _ = ask(t, srv, "udp", "web.default.svc.cluster.local", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("cluster name: rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestLoopRefused(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	for _, tc := range []struct{ bind, to string }{
		{"bind 127.0.0.1", fmt.Sprintf("to 127.0.0.1:%d", port)},
		{"", fmt.Sprintf("to 127.0.0.1:%d", port)},
		{"bind 127.0.0.1", fmt.Sprintf("to 10.0.0.10\n\t\tfailover 127.0.0.1:%d", port)},
	} {
		corefile := fmt.Sprintf(".:%d {\n\t%s\n\tupstream {\n\t\t%s\n\t}\n}\n", port, tc.bind, tc.to)
		inst, err := startCorefile(corefile)
		if err == nil {
			testdns.StopCoreDNS(t, inst)
			t.Errorf("%q: started, want a loop error", corefile)
			continue
		}
		t.Logf("refused as expected: %v", err)
	}
}
