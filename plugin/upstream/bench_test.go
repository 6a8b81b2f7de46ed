package upstream_test

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkSpread measures what the spread modes cost against forward's
// socket reuse and stock forward, on loopback with a miekg/dns upstream in
// the same process. Besides wall time it reports the process's CPU time per
// query (cpu-ns/op: client, CoreDNS and upstream together; the same for
// every variant but the forwarder), which is steadier on a shared machine:
//
//	go test -run '^$' -bench Spread -benchtime 20000x ./plugin/upstream/
func BenchmarkSpread(b *testing.B) {
	for _, variant := range []string{"forward", "spread_off", "spread_10ms", "spread_query"} {
		b.Run(variant, func(b *testing.B) {
			a := startFake(b, "192.0.2.1")
			block := "\tforward . " + a.addr
			if spread, ok := strings.CutPrefix(variant, "spread_"); ok {
				block = upstreamBlock("to "+a.addr, "spread "+spread, "health_check 10s", "max_concurrent 0")
			}
			l := startLocaldns(b, block)
			q := new(dns.Msg)
			q.SetQuestion("bench.example.com.", dns.TypeA)
			cpu0 := cpuTime(b)
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
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the user and system CPU time of this process.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
