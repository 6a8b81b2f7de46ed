package upstream_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
	"github.com/prometheus/client_golang/prometheus"

	_ "github.com/localdns/localdns/internal/plugins"
)

func init() {
	caddy.Quiet = true
	dnsserver.Quiet = true
}

// fakeUpstream is a DNS server on 127.0.0.1 (UDP and TCP on one port) that
// the test controls: it answers A queries with its own address in the
// answer, NXDOMAIN for the zones in nxZones, and nothing at all while silent.
type fakeUpstream struct {
	addr    string
	stop    func()
	answer  string // the A record data it answers with
	nxZones []string

	silent atomic.Bool
	// dropQueries: answer health probes, never a query (a black hole whose
	// probes still pass).
	dropQueries atomic.Bool
	badProbe    atomic.Bool                   // answer health probes with garbage
	badRoot     atomic.Bool                   // answer ". NS" probes with garbage (as if VNet DNS behind it were down)
	probes      atomic.Int64                  // health probes answered
	truncate    atomic.Bool                   // answer UDP queries with TC set and no answer
	hold        atomic.Pointer[chan struct{}] // when set, queries wait for it to close

	mu       sync.Mutex
	queries  []string // qnames of non-health-check queries, in order, answered or not
	udp, tcp int
	ports    map[int]bool // UDP source ports of non-health-check queries
	inflight atomic.Int64
}

func startFake(t testing.TB, answer string, nxZones ...string) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{answer: answer, nxZones: nxZones, ports: map[int]bool{}}
	f.addr, f.stop = testdns.Serve(t, f)
	return f
}

func (f *fakeUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	// Health probes: NS queries for the root or a zone apex we serve.
	isHC := q.Qtype == dns.TypeNS && (q.Name == "." || q.Name == "cluster.local.")
	if f.silent.Load() {
		if !isHC {
			f.mu.Lock()
			f.queries = append(f.queries, q.Name)
			f.mu.Unlock()
		}
		return
	}
	if isHC && (f.badProbe.Load() || (q.Name == "." && f.badRoot.Load())) {
		w.Write([]byte{0, 1, 2})
		return
	}
	if isHC {
		f.probes.Add(1)
	}
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	if !isHC {
		f.inflight.Add(1)
		defer f.inflight.Add(-1)
		f.mu.Lock()
		f.queries = append(f.queries, q.Name)
		if isUDP {
			f.udp++
			f.ports[w.RemoteAddr().(*net.UDPAddr).Port] = true
		} else {
			f.tcp++
		}
		f.mu.Unlock()
		if h := f.hold.Load(); h != nil {
			<-*h
		}
		if f.dropQueries.Load() {
			return
		}
	}
	m := new(dns.Msg)
	m.SetReply(r)
	switch {
	case isHC:
	case isUDP && f.truncate.Load():
		m.Truncated = true
	case f.isNX(q.Name):
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeA:
		rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", q.Name, f.answer))
		m.Answer = append(m.Answer, rr)
	}
	w.WriteMsg(m)
}

func (f *fakeUpstream) isNX(name string) bool {
	for _, z := range f.nxZones {
		if dns.IsSubDomain(z, name) {
			return true
		}
	}
	return false
}

func (f *fakeUpstream) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.queries...)
}

func (f *fakeUpstream) count() (udp, tcp int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.udp, f.tcp
}

func (f *fakeUpstream) sourcePorts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ports)
}

// listener is where a CoreDNS instance under test listens; with port 0 UDP
// and TCP get different ports.
type listener struct{ udp, tcp string }

// startLocaldns starts CoreDNS in-process with one server block on
// 127.0.0.1 and a free port, whose body is body, and returns its addresses.
func startLocaldns(t testing.TB, body string) listener {
	t.Helper()
	inst := testdns.StartCoreDNS(t, fmt.Sprintf(".:0 {\n\tbind 127.0.0.1\n%s\n}\n", body))
	t.Cleanup(func() { testdns.StopCoreDNS(t, inst) })
	return listener{udp: inst.Servers()[0].LocalAddr().String(), tcp: inst.Servers()[0].Addr().String()}
}

func startCorefile(corefile string) (*caddy.Instance, error) {
	return caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
}

// ask sends one query and returns the answer and how long it took.
func ask(t testing.TB, l listener, network, name string, qtype uint16) (*dns.Msg, time.Duration) {
	t.Helper()
	server := l.udp
	if network == "tcp" {
		server = l.tcp
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 8 * time.Second}
	start := time.Now()
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s %s: %v", name, network, err)
	}
	return r, time.Since(start)
}

// answerOf returns the A record data of r, or the rcode name when there is none.
func answerOf(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return dns.RcodeToString[r.Rcode]
}

// metric returns the value of a gauge or counter, or the sample count of a
// histogram, from the default registry, for the series with these labels.
func metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testbin.WaitFor(t, timeout, what, cond)
}

func healthyGauge(t testing.TB, group, addr string) float64 {
	return metric(t, "localdns_upstream_healthy", "group", group, "upstream", addr)
}

// markedDown reports whether the healthy gauge of (group, addr) exists and
// says down. metric reads an absent series as 0, which must not count as
// "marked down" (the series is published after the first probe).
func markedDown(t testing.TB, group, addr string) bool {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "localdns_upstream_healthy" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if got["group"] == group && got["upstream"] == addr {
				return m.GetGauge().GetValue() == 0
			}
		}
	}
	return false
}

func lines(s ...string) string { return strings.Join(s, "\n") }
