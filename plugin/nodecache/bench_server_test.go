package nodecache_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/plugin/nodecache"

	"github.com/localdns/localdns/internal/testdns"
)

// BenchmarkHitUDP measures a cache hit through CoreDNS's server over UDP
// loopback, nodecache against the stock cache plugin in the same build.
// Both run in this process; the client shares the CPU, so the numbers are
// relative. make bench runs the real comparison with dnsperf.
func BenchmarkHitUDP(b *testing.B) {
	for _, tc := range []struct{ name, block string }{
		{"nodecache", "  nodecache\n"},
		{"stock-cache", "  cache\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			nodecacheReset()
			up := startBenchUpstream(b)
			s := startBenchServer(b, fmt.Sprintf(".:0 {\n  bind 127.0.0.1\n%s  forward . %s\n}\n", tc.block, up))
			q := new(dns.Msg).SetQuestion("bench.example.org.", dns.TypeA)
			q.SetEdns0(1232, false)
			c := &dns.Client{Timeout: 2 * time.Second}
			if _, _, err := c.Exchange(q, s); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8) // enough clients in flight to keep the server busy
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				conn, err := c.Dial(s)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				for pb.Next() {
					if _, _, err := c.ExchangeWithConn(q, conn); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func nodecacheReset() { nodecache.ResetShared(time.Now) }

func startBenchUpstream(b *testing.B) string {
	b.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		w.WriteMsg(aAnswer("192.0.2.1", 3600)(r))
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	b.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func startBenchServer(b *testing.B, corefile string) string {
	b.Helper()
	inst := testdns.StartCoreDNS(b, corefile)
	b.Cleanup(func() { testdns.StopCoreDNS(b, inst) })
	return inst.Servers()[0].LocalAddr().String()
}
