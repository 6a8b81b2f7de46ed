package nodecache

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestQuestionMismatchIsNotCached(t *testing.T) {
	q := &query{qtype: dns.TypeA, qclass: dns.ClassINET}
	q.nameLen, _ = dns.PackDomainName("asked.example.org.", q.name[:], 0, nil, false)
	pol := defaultConfig().policy
	for name, m := range map[string]*dns.Msg{
		"other name":  new(dns.Msg).SetQuestion("other.example.org.", dns.TypeA),
		"other type":  new(dns.Msg).SetQuestion("asked.example.org.", dns.TypeAAAA),
		"no question": {},
	} {
		m.Response = true
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "asked.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 9)}}
		if e, why := newEntry(m, 1, q, &pol, time.Now()); e != nil {
			t.Errorf("%s: cached", name)
		} else if why == "" {
			t.Errorf("%s: no reason given", name)
		}
	}
	ok := new(dns.Msg).SetQuestion("ASKED.example.org.", dns.TypeA)
	ok.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "asked.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 9)}}
	if e, why := newEntry(ok, 1, q, &pol, time.Now()); e == nil {
		t.Fatalf("matching answer (other casing) not cached: %s", why)
	}
}
