package nodecache

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/localdns/localdns/internal/testbin"
)

func packQuery(t testing.TB, name string, qtype uint16, edns uint16, do bool) []byte {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, do)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestServeWire(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	s.put(testEntry(t, 7, "wire.example.org.", 300, now))

	q := packQuery(t, "WiRe.Example.ORG.", dns.TypeA, 0, false)
	q[0], q[1] = 0xAB, 0xCD
	out := make([]byte, 4096)
	n, st := s.ServeWire(7, q, UDP, now.Add(10*time.Second), out)
	if st != Hit {
		t.Fatalf("status %s, want hit", st)
	}
	m := new(dns.Msg)
	if err := m.Unpack(out[:n]); err != nil {
		t.Fatalf("answer does not unpack: %v", err)
	}
	if m.Id != 0xABCD || m.Question[0].Name != "WiRe.Example.ORG." || !m.Response || len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 290 {
		t.Fatalf("answer: %v", m)
	}
	if m.IsEdns0() != nil {
		t.Fatal("OPT in the answer to a query without EDNS0")
	}

	// EDNS0: OPT with our size and the client's DO bit.
	n, st = s.ServeWire(7, packQuery(t, "wire.example.org.", dns.TypeA, 4096, false), TCP, now, out)
	if st != Hit || m.Unpack(out[:n]) != nil || m.IsEdns0() == nil || m.IsEdns0().UDPSize() != advertisedUDPSize {
		t.Fatalf("EDNS0 answer: %s %v", st, m)
	}

	for name, tc := range map[string]struct {
		ns  Namespace
		msg []byte
	}{
		"other namespace": {8, packQuery(t, "wire.example.org.", dns.TypeA, 0, false)},
		"other type":      {7, packQuery(t, "wire.example.org.", dns.TypeAAAA, 0, false)},
		"DO bit":          {7, packQuery(t, "wire.example.org.", dns.TypeA, 1232, true)},
		"unknown name":    {7, packQuery(t, "nowhere.example.org.", dns.TypeA, 0, false)},
		"short":           {7, []byte{1, 2, 3}},
		"truncated":       {7, packQuery(t, "wire.example.org.", dns.TypeA, 0, false)[:20]},
	} {
		if _, st := s.ServeWire(tc.ns, tc.msg, UDP, now, out); st != Miss {
			t.Errorf("%s: status %s, want miss", name, st)
		}
	}
	// Expired, and no block owns the namespace to refresh it: miss.
	if _, st := s.ServeWire(7, q, UDP, now.Add(301*time.Second), out); st != Miss {
		t.Fatalf("expired entry: status %s", st)
	}
	// Output buffer too small: miss, nothing written past it.
	if _, st := s.ServeWire(7, q, UDP, now, out[:20]); st != Miss {
		t.Fatalf("short output buffer: status %s", st)
	}
	// NSID requests are left to the server (the nsid plugin answers them).
	nq := new(dns.Msg).SetQuestion("wire.example.org.", dns.TypeA)
	nq.SetEdns0(1232, false)
	nq.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID}}
	nb, _ := nq.Pack()
	if _, st := s.ServeWire(7, nb, UDP, now, out); st != Miss {
		t.Fatalf("NSID query: status %s", st)
	}
}

func TestServeWireStaleImmediate(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	e := testEntry(t, 9, "stale.example.org.", 10, now)
	s.put(e)
	next := &refusing{}
	h := &Nodecache{store: s, ns: 9, pol: defaultConfig().policy, label: "test", Next: next}
	s.register(h)
	out := make([]byte, 4096)
	n, st := s.ServeWire(9, packQuery(t, "stale.example.org.", dns.TypeA, 1232, false), UDP, now.Add(20*time.Second), out)
	if st != Stale {
		t.Fatalf("status %s, want stale", st)
	}
	m := new(dns.Msg)
	if err := m.Unpack(out[:n]); err != nil {
		t.Fatal(err)
	}
	if m.Answer[0].Header().Ttl != staleTTL {
		t.Fatalf("stale TTL %d", m.Answer[0].Header().Ttl)
	}
	opt := m.IsEdns0()
	if opt == nil || len(opt.Option) != 1 || opt.Option[0].(*dns.EDNS0_EDE).InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Fatalf("stale answer without EDE 3: %v", m)
	}
	// A background refresh went upstream and failed (REFUSED): the entry
	// stays.
	testbin.WaitFor(t, 5*time.Second, "the stale answer's background refresh", func() bool { return next.calls.Load() >= 1 && !e.refreshing.Load() })
	if s.peek(e.key) != e {
		t.Fatal("a failed refresh removed the stale entry")
	}
}

// refusing is a next plugin that answers REFUSED and counts its calls.
type refusing struct{ calls atomic.Int32 }

func (*refusing) Name() string { return "refusing" }
func (f *refusing) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	f.calls.Add(1)
	m := new(dns.Msg).SetRcode(r, dns.RcodeRefused)
	w.WriteMsg(m)
	return dns.RcodeRefused, nil
}

// discard is a client connection that drops what it is sent.
type discard struct {
	remote net.Addr
	n      int
}

func (d *discard) LocalAddr() net.Addr         { return d.remote }
func (d *discard) RemoteAddr() net.Addr        { return d.remote }
func (d *discard) WriteMsg(m *dns.Msg) error   { b, err := m.Pack(); d.n = len(b); return err }
func (d *discard) Write(b []byte) (int, error) { d.n = len(b); return len(b), nil }
func (d *discard) Close() error                { return nil }
func (d *discard) TsigStatus() error           { return nil }
func (d *discard) TsigTimersOnly(bool)         {}
func (d *discard) Hijack()                     {}

func TestHitPathDoesNotAllocate(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	s.put(testEntry(t, 3, "alloc.example.org.", 3600, now))
	h := &Nodecache{store: s, ns: 3, pol: defaultConfig().policy}
	out := make([]byte, 4096)
	raw := packQuery(t, "alloc.example.org.", dns.TypeA, 1232, false)
	if a := testing.AllocsPerRun(1000, func() {
		if _, st := s.ServeWire(3, raw, UDP, now, out); st != Hit {
			t.Fatal("miss")
		}
	}); a != 0 {
		t.Errorf("ServeWire: %v allocations per hit", a)
	}
	r := new(dns.Msg).SetQuestion("alloc.example.org.", dns.TypeA)
	r.SetEdns0(1232, false)
	w := &discard{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
	ctx := context.Background()
	if a := testing.AllocsPerRun(1000, func() {
		w.n = 0
		h.ServeDNS(ctx, w, r)
		if w.n == 0 {
			t.Fatal("nothing written")
		}
	}); a != 0 {
		t.Errorf("ServeDNS: %v allocations per hit", a)
	}
}

func TestHitReportsRcodeToRecorders(t *testing.T) {
	s := NewStore(8 << 20)
	h := &Nodecache{store: s, ns: 4, pol: defaultConfig().policy}
	var q query
	q.qtype, q.qclass = dns.TypeA, dns.ClassINET
	q.nameLen, _ = dns.PackDomainName("nx.example.org.", q.name[:], 0, nil, false)
	m := new(dns.Msg).SetQuestion("nx.example.org.", dns.TypeA)
	m.Response, m.Rcode = true, dns.RcodeNameError
	m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.example.org.", Mbox: "h.example.org.", Minttl: 60}}
	e, why := newEntry(m, 4, &q, &h.pol, time.Now())
	if e == nil {
		t.Fatal(why)
	}
	s.put(e)
	// prometheus wraps the server's writer, log wraps prometheus's.
	prom := metrics.NewRecorder(&discard{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}})
	logRec := dnstest.NewRecorder(prom)
	h.ServeDNS(context.Background(), logRec, new(dns.Msg).SetQuestion("nx.example.org.", dns.TypeA))
	if logRec.Rcode != dns.RcodeNameError || prom.Rcode != dns.RcodeNameError {
		t.Fatalf("recorders saw rcode %d and %d, want NXDOMAIN", logRec.Rcode, prom.Rcode)
	}
	if prom.Len == 0 {
		t.Fatal("answer not written through the recorders")
	}
}

func TestAnswerWire(t *testing.T) {
	s := NewStore(8 << 20)
	s.put(testEntry(t, 6, "front.example.org.", 300, time.Now()))
	// Registered, as setup does: a hit then counts on the block's counters.
	h := &Nodecache{store: s, ns: 6, pol: defaultConfig().policy, label: "answerwire-test"}
	s.register(h)
	hits := h.counters(h.label).hits
	before := counterOf(t, hits)
	out := make([]byte, 4096)
	n := h.AnswerWire(packQuery(t, "front.example.org.", dns.TypeA, 0, false), false, out)
	m := new(dns.Msg)
	if n == 0 || m.Unpack(out[:n]) != nil || len(m.Answer) != 1 {
		t.Fatalf("hit: %d bytes, %v", n, m)
	}
	if got := counterOf(t, hits) - before; got != 1 {
		t.Errorf("hit counter went up by %v, want 1", got)
	}
	if n := h.AnswerWire(packQuery(t, "other.example.org.", dns.TypeA, 0, false), true, out); n != 0 {
		t.Fatalf("miss wrote %d bytes", n)
	}
}

func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
