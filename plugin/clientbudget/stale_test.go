package clientbudget_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/plugin/clientbudget"
)

// exchangeFrom sends one query for name from src and returns the answer.
func exchangeFrom(t *testing.T, src, server, name string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s from %s: %v", name, src, err)
	}
	return r
}

// TestOverBudgetGetsStaleAnswer: a client with no budget left whose name is
// cached but expired gets the stale answer (serve_stale verify asks
// upstream with the client's address, which the budget refuses), not
// SERVFAIL; a new name gets SERVFAIL. Upstream sees only the first query.
func TestOverBudgetGetsStaleAnswer(t *testing.T) {
	up := testdns.Start(t, "192.0.2.1")
	// One token, refilled after 1000 s: the client's first miss spends it.
	server := startServer(t, up, "0.001 1", "        max_ttl 5\n        serve_stale verify 3600")
	const src, name = "127.0.0.7", "stale.example."
	if r := exchangeFrom(t, src, server, name); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("first query: %v", r)
	}
	if r := exchangeFrom(t, src, server, "other.example."); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("a new name over budget: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	// Hits are free: ask until the entry has expired (TTL floor 5 s) and
	// the answer is the stale one.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := exchangeFrom(t, src, server, name)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("over budget, cached name: %v", r)
		}
		if isStale(r) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no stale answer within 15 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := up.Count(name); n != 1 {
		t.Errorf("upstream saw %s %d times, want 1 (the over-budget check must not reach it)", name, n)
	}
	if n := up.Count("other.example."); n != 0 {
		t.Errorf("upstream saw the over-budget new name %d times", n)
	}
}

func isStale(r *dns.Msg) bool {
	opt := r.IsEdns0()
	if opt == nil {
		return false
	}
	for _, o := range opt.Option {
		if e, ok := o.(*dns.EDNS0_EDE); ok && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
			return true
		}
	}
	return false
}

// TestNXDOMAINFromUpstreamCounted: an NXDOMAIN the upstream gives a client
// is counted for that client in Top.
func TestNXDOMAINFromUpstreamCounted(t *testing.T) {
	nx := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns: "ns.example.", Mbox: "h.example.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 60}}
		w.WriteMsg(m)
	})
	addr, _ := testdns.Serve(t, nx)
	server := startServer(t, &testdns.Upstream{Addr: addr}, "0", "")
	for i := range 3 {
		name := strings.Repeat("x", i+1) + ".nx.example."
		if r := exchangeFrom(t, "127.0.0.8", server, name); r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: %s", name, dns.RcodeToString[r.Rcode])
		}
	}
	for _, c := range clientbudget.Shared().Top(50).Clients {
		if c.Client == "127.0.0.8" {
			if c.NXDOMAIN != 3 || c.Misses != 3 {
				t.Fatalf("client: %+v, want 3 NXDOMAIN and 3 misses", c)
			}
			return
		}
	}
	t.Fatal("client 127.0.0.8 not in top")
}
