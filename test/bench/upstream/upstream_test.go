package upstream

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

func TestAnswersAndCounts(t *testing.T) {
	s, err := Start("127.0.0.1:0", net.IPv4(192, 0, 2, 7), 3600)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network}
		m := new(dns.Msg).SetQuestion("some.random.name.example.", dns.TypeA)
		r, _, err := c.Exchange(m, s.Addr())
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s: want one answer, got %v", network, r)
		}
		a, ok := r.Answer[0].(*dns.A)
		if !ok || !a.A.Equal(net.IPv4(192, 0, 2, 7)) || a.Hdr.Ttl != 3600 || a.Hdr.Name != "some.random.name.example." {
			t.Fatalf("%s: wrong answer %v", network, r.Answer[0])
		}
	}

	m := new(dns.Msg).SetQuestion("x.example.", dns.TypeAAAA)
	r, err := dns.Exchange(m, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("AAAA: want NODATA with SOA, got %v", r)
	}
	if got := s.Queries(); got != 3 {
		t.Fatalf("Queries() = %d, want 3", got)
	}
}

func TestLoopbackOnly(t *testing.T) {
	if _, err := Start("0.0.0.0:0", net.IPv4(192, 0, 2, 7), 60); err == nil {
		t.Fatal("Start accepted a non-loopback address")
	}
}
