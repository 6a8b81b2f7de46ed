package nodecache_test

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/plugin/nodecache"
)

// TestWirePathAndChainAgreeOnBadQueries sends the same queries for a cached
// name to CoreDNS's server (the plugin chain) and to a front end answering
// from the cache with ServeWire (misses relayed to the chain, as the socket
// fast path does): both must give the same rcode. Malformed EDNS0 options
// are FORMERR through the chain, so the wire path must not answer them from
// the cache either.
func TestWirePathAndChainAgreeOnBadQueries(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.9", 300))
	s := startServer(t, corefile(up, ""))
	chain := s.addr(0)
	fast, misses := wireFrontEnd(t, nodecache.NamespaceFor(".", []string{"127.0.0.1"}, "0"), chain.udp)
	const name = "rule.example.org."
	ask(t, chain, name, qopt{net: "tcp", edns: 1232}) // cached (EDNS, DO clear)

	query := func(opts ...dns.EDNS0) *dns.Msg {
		q := new(dns.Msg).SetQuestion(name, dns.TypeA)
		q.SetEdns0(1232, false)
		o := q.IsEdns0()
		o.Option = append(o.Option, opts...)
		return q
	}
	local := func(code uint16, data ...byte) dns.EDNS0 { return &dns.EDNS0_LOCAL{Code: code, Data: data} }
	for _, tc := range []struct {
		name  string
		q     func() []byte
		rcode int  // -1: whatever the chain answers
		hit   bool // answered from the cache on the wire path
	}{
		{"plain", packed(query()), dns.RcodeSuccess, true},
		{"cookie", packed(query(local(dns.EDNS0COOKIE, 1, 2, 3, 4, 5, 6, 7, 8))), dns.RcodeSuccess, true},
		{"good subnet", packed(query(local(dns.EDNS0SUBNET, 0, 1, 24, 0, 10, 0, 0))), dns.RcodeSuccess, true},
		{"subnet family 3", packed(query(local(dns.EDNS0SUBNET, 0, 3, 0, 0))), dns.RcodeFormatError, false},
		{"subnet /33 IPv4", packed(query(local(dns.EDNS0SUBNET, 0, 1, 33, 0, 10, 0, 0, 0, 0))), dns.RcodeFormatError, false},
		{"subnet too short", packed(query(local(dns.EDNS0SUBNET, 0, 1))), dns.RcodeFormatError, false},
		{"expire of 2 bytes", packed(query(local(dns.EDNS0EXPIRE, 0, 1))), dns.RcodeFormatError, false},
		{"EDNS version 1", func() []byte {
			q := query()
			q.IsEdns0().SetVersion(1)
			return packed(q)()
		}, dns.RcodeBadVers, false},
		{"opcode STATUS", func() []byte {
			q := query()
			q.Opcode = dns.OpcodeStatus
			return packed(q)()
		}, dns.RcodeNotImplemented, false},
		{"no question", func() []byte {
			b := packed(query())()
			b[5] = 0 // QDCOUNT
			return b
		}, dns.RcodeFormatError, false},
		{"class CH", func() []byte {
			q := query()
			q.Question[0].Qclass = dns.ClassCHAOS
			return packed(q)()
		}, -1, false}, // REFUSED unless a chaos plugin is loaded; the chain decides
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.q()
			viaChain := rcodeOf(t, rawSend(t, chain.udp, b))
			before := misses()
			viaWire := rcodeOf(t, rawSend(t, fast, b))
			want := tc.rcode
			if want < 0 {
				want = viaChain
			}
			if viaChain != want || viaWire != want {
				t.Fatalf("chain %s, wire path %s; want %s from both", dns.RcodeToString[viaChain], dns.RcodeToString[viaWire], dns.RcodeToString[want])
			}
			if hit := misses() == before; hit != tc.hit {
				t.Fatalf("answered from the cache on the wire path: %v, want %v", hit, tc.hit)
			}
		})
	}
}

func packed(m *dns.Msg) func() []byte {
	return func() []byte {
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		return b
	}
}

func rcodeOf(t *testing.T, raw []byte) int {
	t.Helper()
	if len(raw) < 12 {
		t.Fatalf("%d-byte answer", len(raw))
	}
	rcode := int(raw[3] & 0x0F)
	m := new(dns.Msg)
	if err := m.Unpack(raw); err == nil {
		rcode = m.Rcode // with the extended bits of the OPT record
	}
	return rcode
}
