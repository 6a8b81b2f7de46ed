package extdns

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/test/lab/delayproxy"
)

func TestServer(t *testing.T) {
	s, err := New(60, delayproxy.Delay{Base: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr, _ := testdns.Serve(t, s)

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
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "labdns_queries_total 4\n") {
		t.Errorf("metrics: %s", rec.Body.String())
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/hold", nil))
	st, err := delayproxy.ParseHold(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if st.Count != 4 || st.P50US < 10000 || st.MaxUS > 100000 || st.Configured != "10ms + exp(mean 0s)" {
		t.Errorf("hold: %+v, want 4 queries held 10ms", st)
	}
}

// TestServerHoldPrecision checks the actual delay of a 1 ms "Azure DNS".
func TestServerHoldPrecision(t *testing.T) {
	s, err := New(60, delayproxy.Delay{Base: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr, _ := testdns.Serve(t, s)
	c := &dns.Client{Timeout: time.Second}
	for i := range 300 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("api%d.example.com.", i), dns.TypeA)
		if _, rtt, err := c.Exchange(m, addr); err != nil || rtt < time.Millisecond {
			t.Fatalf("query %d: rtt %v, err %v", i, rtt, err)
		}
	}
	st := s.HoldStats()
	t.Logf("extdns 1ms: %s", st)
	if st.Count != 300 || st.P50US < 1000 || st.P50US > 1300 {
		t.Errorf("hold %+v, want 300 queries with p50 1000-1300µs", st)
	}
}

// TestServerClose checks that a query held when the server closes is
// answered instead of stranded.
func TestServerClose(t *testing.T) {
	s, err := New(60, delayproxy.Delay{Base: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := testdns.Serve(t, s)
	done := make(chan error, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("api1.example.com.", dns.TypeA)
		_, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, addr)
		done <- err
	}()
	for s.Queries() == 0 {
		time.Sleep(time.Millisecond)
	}
	s.Close()
	if err := <-done; err != nil {
		t.Errorf("held query after Close: %v", err)
	}
}
