package junk_test

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	// Our build: the plugins and the chain order the binary runs.
	_ "github.com/localdns/localdns/internal/plugins"

	"github.com/localdns/localdns/internal/testdns"
)

// upstream is a DNS server the test starts on 127.0.0.1, UDP and TCP on one
// port (forward asks over the client's transport): it answers every A query
// with 192.0.2.1 and counts what reaches it.
type upstream struct {
	addr    string
	queries atomic.Int64
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	var (
		ln  net.Listener
		pc  net.PacketConn
		err error
	)
	for range 5 { // the TCP port may be taken for UDP: try another
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", ln.Addr().String()); err == nil {
			break
		}
		ln.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A:   net.IPv4(192, 0, 2, 1),
			}}
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func startCoreDNS(t *testing.T, corefile string) *caddy.Instance {
	t.Helper()
	caddy.Quiet, dnsserver.Quiet = true, true
	inst := testdns.StartCoreDNS(t, corefile)
	t.Cleanup(func() { testdns.StopCoreDNS(t, inst) })
	return inst
}

func junkAnswers(t *testing.T, server, rule string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "localdns_junk_answers_total" {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "server" && l.GetValue() != server || l.GetName() == "rule" && l.GetValue() != rule {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestJunkInCoreDNS(t *testing.T) {
	up := startUpstream(t)
	// The server label is the block's address as configured: .:0 bound to
	// 127.0.0.1.
	const server = "dns://127.0.0.1:0"
	inst := startCoreDNS(t, fmt.Sprintf(`.:0 {
    bind 127.0.0.1
    junk {
        min_labels internal.cloudapp.net 4
        zone reddog.microsoft.com
        kubernetes cluster.local
        ttl 30
    }
    forward . %s
}
`, up.addr))
	udp := inst.Servers()[0].LocalAddr().String()
	tcp := inst.Servers()[0].Addr().String()

	junk := []struct{ name, zone, rule string }{
		{"api.github.com.default.svc.cluster.local.", "cluster.local.", "kubernetes:cluster.local."},
		{"API.GitHub.com.Cluster.Local.", "cluster.local.", "kubernetes:cluster.local."},
		{"api.github.com.abc123.bx.internal.cloudapp.net.", "internal.cloudapp.net.", "min_labels:internal.cloudapp.net."},
		{"api.github.com.reddog.microsoft.com.", "reddog.microsoft.com.", "zone:reddog.microsoft.com."},
	}
	real := []string{
		"api.github.com.",
		"api.github.com.svc.cluster.local.",
		"kubernetes.default.svc.cluster.local.",
		"_https._tcp.kubernetes.default.svc.cluster.local.",
		"cluster.local.",
		"vm1.abc123.bx.internal.cloudapp.net.",
		"reddog.microsoft.com.",
	}

	for _, network := range []string{"udp", "tcp"} {
		addr := udp
		if network == "tcp" {
			addr = tcp
		}
		client := &dns.Client{Net: network, Timeout: 2 * time.Second}
		for _, edns := range []bool{false, true} {
			for _, tc := range junk {
				before, beforeUp := junkAnswers(t, server, tc.rule), up.queries.Load()
				q := new(dns.Msg)
				q.SetQuestion(tc.name, dns.TypeA)
				if edns {
					q.SetEdns0(1232, false)
				}
				m, _, err := client.Exchange(q, addr)
				if err != nil {
					t.Fatalf("%s %s: %v", network, tc.name, err)
				}
				if m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 || len(m.Ns) != 1 {
					t.Fatalf("%s %s: want NXDOMAIN with only an SOA, got\n%v", network, tc.name, m)
				}
				if m.Question[0].Name != tc.name {
					t.Errorf("%s %s: question echoed as %q", network, tc.name, m.Question[0].Name)
				}
				soa, ok := m.Ns[0].(*dns.SOA)
				if !ok || soa.Hdr.Name != tc.zone || soa.Hdr.Ttl != 30 || soa.Minttl != 30 {
					t.Errorf("%s %s: authority %v, want the SOA of %s with TTL and minimum 30", network, tc.name, m.Ns[0], tc.zone)
				}
				if (m.IsEdns0() != nil) != edns {
					t.Errorf("%s %s: OPT in reply %v, OPT in query %v", network, tc.name, m.IsEdns0() != nil, edns)
				}
				if got := up.queries.Load() - beforeUp; got != 0 {
					t.Errorf("%s %s: junk reached the upstream %d times", network, tc.name, got)
				}
				if got := junkAnswers(t, server, tc.rule) - before; got != 1 {
					t.Errorf("%s %s: localdns_junk_answers_total{rule=%q} moved by %v, want 1", network, tc.name, tc.rule, got)
				}
			}
		}
		for _, name := range real {
			beforeUp := up.queries.Load()
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeA)
			m, _, err := client.Exchange(q, addr)
			if err != nil {
				t.Fatalf("%s %s: %v", network, name, err)
			}
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
				t.Errorf("%s %s: want the upstream's answer, got\n%v", network, name, m)
			}
			if got := up.queries.Load() - beforeUp; got != 1 {
				t.Errorf("%s %s: reached the upstream %d times, want 1", network, name, got)
			}
		}
	}
}

// TestJunkChainOrder checks our directive order puts junk before the cache,
// whatever the order in the Corefile: junk answers the same junk name every
// time (its counter moves each time; after a cache it would move once), so
// its answers are never stored next to real ones.
func TestJunkChainOrder(t *testing.T) {
	up := startUpstream(t)
	const server, rule = "dns://127.0.0.1:0", "zone:reddog.microsoft.com."
	inst := startCoreDNS(t, fmt.Sprintf(`.:0 {
    bind 127.0.0.1
    forward . %s
    cache 300
    junk {
        zone reddog.microsoft.com
    }
}
`, up.addr))
	before := junkAnswers(t, server, rule)
	client := &dns.Client{Timeout: 2 * time.Second}
	for range 3 {
		q := new(dns.Msg)
		q.SetQuestion("x.reddog.microsoft.com.", dns.TypeA)
		m, _, err := client.Exchange(q, inst.Servers()[0].LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 || m.Ns[0].Header().Ttl != 60 {
			t.Fatalf("want junk's NXDOMAIN with the default TTL 60, got\n%v", m)
		}
	}
	if got := junkAnswers(t, server, rule) - before; got != 3 {
		t.Errorf("junk answered %v of 3 queries: it runs after the cache", got)
	}
	if n := up.queries.Load(); n != 0 {
		t.Errorf("upstream saw %d queries, want 0", n)
	}
}
