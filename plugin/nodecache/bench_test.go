package nodecache

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/cache"
	"github.com/miekg/dns"
)

// fixedAnswer is a next plugin answering every query with one A record.
type fixedAnswer struct{}

func (fixedAnswer) Name() string { return "fixed" }
func (fixedAnswer) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m := new(dns.Msg).SetReply(r)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(192, 0, 2, 1)}}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// BenchmarkHit compares a cache hit in nodecache with one in the stock cache
// plugin, both called as CoreDNS calls a plugin (an unpacked query, a
// response writer), and nodecache's byte-level ServeWire.
func BenchmarkHit(b *testing.B) {
	r := new(dns.Msg).SetQuestion("bench.example.org.", dns.TypeA)
	r.SetEdns0(1232, false)
	ctx := context.Background()
	udp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}

	b.Run("nodecache", func(b *testing.B) {
		h := &Nodecache{store: NewStore(64 << 20), ns: 1, pol: defaultConfig().policy, Next: fixedAnswer{}}
		h.store.put(testEntry(b, 1, "bench.example.org.", 3600, time.Now()))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			w := &discard{remote: udp}
			for pb.Next() {
				h.ServeDNS(ctx, w, r)
			}
		})
	})
	b.Run("stock-cache", func(b *testing.B) {
		c := cache.New()
		c.Next = fixedAnswer{}
		w := &discard{remote: udp}
		c.ServeDNS(ctx, w, r) // fill
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			w := &discard{remote: udp}
			for pb.Next() {
				c.ServeDNS(ctx, w, r)
			}
		})
	})
	b.Run("nodecache-ServeWire", func(b *testing.B) {
		s := NewStore(64 << 20)
		s.put(testEntry(b, 1, "bench.example.org.", 3600, time.Now()))
		raw, _ := r.Pack()
		now := time.Now()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			out := make([]byte, 4096)
			for pb.Next() {
				if _, st := s.ServeWire(1, raw, UDP, now, out); st != Hit {
					b.Fatal("miss")
				}
			}
		})
	})
}
