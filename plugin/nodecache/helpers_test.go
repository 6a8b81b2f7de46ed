package nodecache_test

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
	dto "github.com/prometheus/client_model/go"

	_ "github.com/localdns/localdns/internal/plugins"
	"github.com/localdns/localdns/plugin/nodecache"
)

func init() {
	caddy.Quiet = true
	dnsserver.Quiet = true
}

// upstream is a DNS server on 127.0.0.1 (UDP and TCP on one port) whose
// answers the test controls through answer.
type upstream struct {
	addr string
	stop func()

	mu      sync.Mutex
	answer  func(r *dns.Msg) *dns.Msg // nil result: stay silent
	delay   time.Duration
	queries map[string]int // lower-case qname -> count
	total   atomic.Int64
}

func startUpstream(t *testing.T, answer func(r *dns.Msg) *dns.Msg) *upstream {
	t.Helper()
	u := &upstream{answer: answer, queries: map[string]int{}}
	u.addr, u.stop = testdns.Serve(t, u)
	return u
}

func (u *upstream) set(answer func(r *dns.Msg) *dns.Msg) {
	u.mu.Lock()
	u.answer = answer
	u.mu.Unlock()
}

func (u *upstream) setDelay(d time.Duration) {
	u.mu.Lock()
	u.delay = d
	u.mu.Unlock()
}

func (u *upstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[strings.ToLower(name)]
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	u.mu.Lock()
	answer, delay := u.answer, u.delay
	u.queries[strings.ToLower(r.Question[0].Name)]++
	u.mu.Unlock()
	u.total.Add(1)
	time.Sleep(delay)
	m := answer(r)
	if m == nil {
		return
	}
	m.Id = r.Id
	w.WriteMsg(m)
}

// aAnswer answers every A query with ip and ttl, AAAA with NODATA.
func aAnswer(ip string, ttl uint32) func(r *dns.Msg) *dns.Msg {
	return func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip)})
		} else {
			m.Ns = append(m.Ns, soa(q.Name, 300, 60))
		}
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(o.UDPSize(), o.Do())
		}
		return m
	}
}

func rcodeAnswer(rcode int) func(r *dns.Msg) *dns.Msg {
	return func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		return m
	}
}

func silent(*dns.Msg) *dns.Msg { return nil }

func soa(zone string, ttl, minttl uint32) *dns.SOA {
	return &dns.SOA{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns." + zone, Mbox: "h." + zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: minttl}
}

// label is the CoreDNS server label of the first block of corefile().
const label = "dns://127.0.0.1:0"

// testClock lets a test move the store's time forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time              { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration)     { c.offset.Add(int64(d)) }
func (c *testClock) set(d time.Duration)         { c.offset.Store(int64(d)) }
func (c *testClock) since(t time.Time) time.Time { return t.Add(time.Duration(c.offset.Load())) }

// freshStore replaces the process-wide store with an empty one driven by a
// test clock, as if the process had just started.
func freshStore(t *testing.T) *testClock {
	t.Helper()
	clock := &testClock{}
	nodecache.ResetShared(clock.now)
	return clock
}

// server is a CoreDNS instance started in-process through caddy.
type server struct {
	t    *testing.T
	inst *caddy.Instance
	once sync.Once
}

func startServer(t *testing.T, corefile string) *server {
	t.Helper()
	s := &server{t: t, inst: testdns.StartCoreDNS(t, corefile)}
	t.Cleanup(s.stop)
	return s
}

// stop stops the current instance (a test may have restarted it), once.
func (s *server) stop() {
	s.once.Do(func() { testdns.StopCoreDNS(s.t, s.inst) })
}

// target is a server's UDP and TCP address (bound separately on port 0).
type target struct{ udp, tcp string }

func (s *server) addr(i int) target {
	sl := s.inst.Servers()[i]
	return target{udp: sl.LocalAddr().String(), tcp: sl.Addr().String()}
}

// corefile returns a one-block Corefile forwarding to up with the given
// nodecache block body.
func corefile(up *upstream, body string) string {
	return fmt.Sprintf(".:0 {\n  bind 127.0.0.1\n  nodecache {\n%s\n  }\n  forward . %s\n}\n", body, up.addr)
}

type qopt struct {
	net    string // "udp" (default) or "tcp"
	edns   uint16 // 0: no EDNS0
	do, cd bool
	qtype  uint16
	nsid   bool
}

func ask(t *testing.T, addr target, name string, o qopt) *dns.Msg {
	t.Helper()
	m, err := exchange(addr, name, o)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return m
}

func exchange(addr target, name string, o qopt) (*dns.Msg, error) {
	q := new(dns.Msg)
	qt := o.qtype
	if qt == 0 {
		qt = dns.TypeA
	}
	q.SetQuestion(name, qt)
	q.CheckingDisabled = o.cd
	if o.edns > 0 {
		q.SetEdns0(o.edns, o.do)
		if o.nsid {
			opt := q.IsEdns0()
			opt.Option = append(opt.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		}
	}
	c := &dns.Client{Net: o.net, Timeout: 5 * time.Second, UDPSize: 65535}
	to := addr.udp
	if o.net == "tcp" {
		to = addr.tcp
	}
	m, _, err := c.Exchange(q, to)
	if err != nil {
		return nil, err
	}
	if m.Id != q.Id {
		return nil, fmt.Errorf("answer ID %d for query ID %d", m.Id, q.Id)
	}
	if len(m.Question) != 1 || m.Question[0].Name != name {
		return nil, fmt.Errorf("answer question %v does not echo %q", m.Question, name)
	}
	return m, nil
}

func ede(m *dns.Msg) (uint16, bool) {
	if o := m.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_EDE); ok {
				return e.InfoCode, true
			}
		}
	}
	return 0, false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testbin.WaitFor(t, 5*time.Second, what, cond)
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
