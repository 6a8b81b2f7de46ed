package upstream_test

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkSpread measures what a socket per query costs against forward's
// socket reuse (and stock forward), on loopback with a miekg/dns upstream:
//
//	go test -run '^$' -bench Spread -benchtime 20000x ./plugin/upstream/
func BenchmarkSpread(b *testing.B) {
	for _, variant := range []string{"forward", "spread_off", "spread_on"} {
		b.Run(variant, func(b *testing.B) {
			a := startFake(b, "192.0.2.1")
			block := "\tforward . " + a.addr
			if spread, ok := strings.CutPrefix(variant, "spread_"); ok {
				block = upstreamBlock("to "+a.addr, "spread "+spread, "health_check 10s", "max_concurrent 0")
			}
			l := startLocaldns(b, block)
			q := new(dns.Msg)
			q.SetQuestion("bench.example.com.", dns.TypeA)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("udp", l.udp)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				co := &dns.Conn{Conn: c}
				for pb.Next() {
					if err := co.WriteMsg(q); err != nil {
						b.Error(err)
						return
					}
					if _, err := co.ReadMsg(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
