package extdns

import (
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/test/lab/delayproxy"
)

func TestServer(t *testing.T) {
	s := &Server{TTL: 60, Delay: delayproxy.Delay{Base: 10 * time.Millisecond}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: s}
	go srv.ActivateAndServe()
	defer srv.Shutdown()
	addr := pc.LocalAddr().String()

	ask := func(name string, qt uint16) (*dns.Msg, time.Duration) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		r, rtt, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r, rtt
	}
	r, rtt := ask("api1.example.com.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(Address("api1.example.com")) || r.Answer[0].Header().Ttl != 60 {
		t.Errorf("A answer: %v", r)
	}
	if rtt < 10*time.Millisecond {
		t.Errorf("answered in %v, before the 10ms delay", rtt)
	}
	if r, _ := ask("svc1.default.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("cluster name: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if r, _ := ask(".", dns.TypeNS); len(r.Answer) != 1 {
		t.Errorf("root NS: %v", r)
	}
	if r, _ := ask("api1.example.com.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Errorf("AAAA: %v", r)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, nil)
	if !strings.Contains(rec.Body.String(), "labdns_queries_total 4\n") {
		t.Errorf("metrics: %s", rec.Body.String())
	}
}
