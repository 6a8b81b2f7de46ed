package nodecache_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/plugin/nodecache"
)

// bigAnswer answers "<kind><count>.<anything>" with count records in a
// fixed order: kind a: A records, aaaa: AAAA records, cname: a chain of
// CNAMEs that ends nowhere (not cacheable: no answer and no SOA). Like a
// real server it sends an OPT record to a query with one (forward reads an
// answer without one as at most 512 bytes).
func bigAnswer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	label := strings.SplitN(q.Name, ".", 2)[0]
	kind := strings.TrimRight(label, "0123456789")
	n, _ := strconv.Atoi(label[len(kind):])
	for i := range n {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 300}
		switch {
		case kind == "a" && q.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(10, 0, byte(i>>8), byte(i))})
		case kind == "aaaa" && q.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			ip := net.ParseIP("2001:db8::")
			ip[14], ip[15] = byte(i>>8), byte(i)
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
		case kind == "cname":
			hdr.Rrtype = dns.TypeCNAME
			if i > 0 {
				hdr.Name = fmt.Sprintf("c%d.%s", i-1, q.Name)
			}
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr, Target: fmt.Sprintf("c%d.%s", i, q.Name)})
		}
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
	}
	m.Compress = true
	return m
}

// fitsOneMore reports whether the first n+1 records of full would have fit
// in limit bytes along with m's question and OPT record (compressed, as
// miekg/dns's Msg.Truncate counts).
func fitsOneMore(m, full *dns.Msg, limit int) bool {
	if len(m.Answer) >= len(full.Answer) {
		return false
	}
	more := m.Copy()
	more.Answer = full.Answer[:len(m.Answer)+1]
	more.Compress = true
	return more.Len() <= limit
}

// rawExchange sends q over UDP from a fresh socket and returns the raw
// answer, so that its exact size can be checked.
func rawExchange(t *testing.T, addr string, q *dns.Msg) []byte {
	t.Helper()
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return rawSend(t, addr, b)
}

// rawSend sends the datagram b to addr and returns the answer.
func rawSend(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", addr, err)
	}
	return buf[:n]
}

// wireFrontEnd answers UDP queries on its own loopback socket from the
// process-wide store with ServeWire, as localdns's socket fast path does. It
// counts the queries it could not answer and, when chain is set, relays them
// there (as the fast path hands them to CoreDNS's server).
func wireFrontEnd(t *testing.T, ns nodecache.Namespace, chain string) (addr string, misses func() int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var missed atomic.Int64
	go func() {
		buf, out := make([]byte, 65535), make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m, st := nodecache.Shared().ServeWire(ns, buf[:n], nodecache.UDP, time.Now(), out)
			if st == nodecache.Miss {
				missed.Add(1)
				if m = relay(chain, buf[:n], out); m == 0 {
					continue
				}
			}
			pc.WriteTo(out[:m], from)
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String(), func() int { return int(missed.Load()) }
}

// relay sends query to addr over UDP and reads the answer into out; 0 when
// there is no addr or no answer.
func relay(addr string, query, out []byte) int {
	if addr == "" {
		return 0
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(query); err != nil {
		return 0
	}
	n, _ := c.Read(out)
	return n
}

// TestTruncatedUDPKeepsWholeRecords: a UDP answer that does not fit the
// client's buffer carries as many whole records as fit, with TC set, through
// the plugin chain and through the wire front end alike; over TCP the whole
// set comes. Stub resolvers that never retry over TCP (musl) use what came.
func TestTruncatedUDPKeepsWholeRecords(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, bigAnswer)
	s := startServer(t, corefile(up, ""))
	chain := s.addr(0)
	fast, misses := wireFrontEnd(t, nodecache.NamespaceFor(".", []string{"127.0.0.1"}, "0"), "")
	for _, tc := range []struct {
		name  string
		qtype uint16
		count int
		edns  uint16 // 0: none
		limit int
	}{
		{"a40.example.org.", dns.TypeA, 40, 0, 512},
		{"aaaa30.example.org.", dns.TypeAAAA, 30, 0, 512},
		{"a100.example.org.", dns.TypeA, 100, 1232, 1232},
		{"aaaa60.example.org.", dns.TypeAAAA, 60, 1232, 1232},
		{"a101.example.org.", dns.TypeA, 101, 65535, 1232},     // max_udp_size 1232
		{"aaaa61.example.org.", dns.TypeAAAA, 61, 65535, 1232}, // max_udp_size 1232
	} {
		t.Run(tc.name, func(t *testing.T) {
			full := ask(t, chain, tc.name, qopt{net: "tcp", qtype: tc.qtype})
			if len(full.Answer) != tc.count || full.Truncated {
				t.Fatalf("TCP: %d records, TC=%v; want %d", len(full.Answer), full.Truncated, tc.count)
			}
			for _, path := range []struct{ name, addr string }{{"chain", chain.udp}, {"wire", fast}} {
				q := new(dns.Msg).SetQuestion(tc.name, tc.qtype)
				if tc.edns > 0 {
					q.SetEdns0(tc.edns, false)
				}
				before := misses()
				raw := rawExchange(t, path.addr, q)
				if path.name == "wire" && misses() != before {
					t.Fatal("the wire front end missed a cached name")
				}
				m := new(dns.Msg)
				if err := m.Unpack(raw); err != nil {
					t.Fatalf("%s: truncated answer does not parse: %v", path.name, err)
				}
				if !m.Truncated {
					t.Fatalf("%s: TC not set on a %d-byte answer of %d records", path.name, len(raw), len(m.Answer))
				}
				if len(raw) > tc.limit || len(m.Answer) == 0 || fitsOneMore(m, full, tc.limit) {
					t.Fatalf("%s: %d bytes with %d records: want as many whole records as fit %d bytes", path.name, len(raw), len(m.Answer), tc.limit)
				}
				for i, rr := range m.Answer {
					if rr.String() != full.Answer[i].String() {
						t.Fatalf("%s: record %d is %v, want %v", path.name, i, rr, full.Answer[i])
					}
				}
				if opt := m.IsEdns0(); (opt != nil) != (tc.edns > 0) || opt != nil && int(opt.UDPSize()) > tc.limit {
					t.Fatalf("%s: OPT %v for a query with EDNS size %d", path.name, opt, tc.edns)
				}
				if binary.BigEndian.Uint16(raw[6:]) != uint16(len(m.Answer)) {
					t.Fatalf("%s: ANCOUNT does not match the records", path.name)
				}
			}
		})
	}
	if got := up.total.Load(); got != 6 {
		t.Fatalf("upstream saw %d queries, want one per name", got)
	}
}

// TestMaxUDPSize: max_udp_size caps UDP answers however large a buffer the
// client claims, for cached answers and for answers that are not cached
// (which CoreDNS fits to the request's, now capped, buffer size).
func TestMaxUDPSize(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, bigAnswer)
	s := startServer(t, corefile(up, "    max_udp_size 600"))
	addr := s.addr(0)
	for _, tc := range []struct {
		name   string
		qtype  uint16
		cached bool
	}{{"a60.example.org.", dns.TypeA, true}, {"cname50.example.org.", dns.TypeA, false}} {
		for i := range 2 {
			q := new(dns.Msg).SetQuestion(tc.name, tc.qtype)
			q.SetEdns0(65535, false)
			raw := rawExchange(t, addr.udp, q)
			m := new(dns.Msg)
			if err := m.Unpack(raw); err != nil {
				t.Fatal(err)
			}
			if !m.Truncated || len(raw) > 600 || len(m.Answer) == 0 {
				t.Fatalf("%s query %d: %d bytes, %d records, TC=%v; want TC and as many records as fit 600 bytes", tc.name, i, len(raw), len(m.Answer), m.Truncated)
			}
			if opt := m.IsEdns0(); opt == nil || opt.UDPSize() > 600 {
				t.Fatalf("%s query %d: OPT %v, want a size of at most 600", tc.name, i, opt)
			}
		}
		want := 1
		if !tc.cached {
			want = 2
		}
		if got := up.count(tc.name); got != want {
			t.Fatalf("%s: upstream saw %d queries, want %d", tc.name, got, want)
		}
		if m := ask(t, addr, tc.name, qopt{net: "tcp", edns: 65535}); m.Truncated || len(m.Answer) < 50 {
			t.Fatalf("%s over TCP: %d records, TC=%v", tc.name, len(m.Answer), m.Truncated)
		}
	}
}
