package upstream_test

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
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

// BenchmarkMiss measures a cache miss of a unique name through the chain a
// node runs (nodecache, clientbudget, upstream), against stock CoreDNS's
// cache and forward in the same build, over UDP loopback with a miekg/dns
// upstream in this process. Every query is a new name, so every one goes
// upstream. allocs/op and cpu-ns/op count the whole process (client,
// server, upstream): only the server differs between the variants.
// make bench-miss measures the same path with dnsperf, a DNAT and pods:
//
//	go test -run '^$' -bench Miss -benchtime 20000x ./plugin/upstream/
func BenchmarkMiss(b *testing.B) {
	for _, variant := range []struct{ name, block string }{
		{"localdns", "\tnodecache\n\tclientbudget 0\n\tupstream {\n\t\tto %s\n\t\thealth_check 10s\n\t}"},
		{"stock", "\tcache\n\tforward . %s"},
	} {
		b.Run(variant.name, func(b *testing.B) {
			up, _ := testdns.Serve(b, dns.HandlerFunc(answerA))
			l := startLocaldns(b, fmt.Sprintf(variant.block, up))
			var seq atomic.Uint64
			prefix := fmt.Sprintf("%s-%d", variant.name, time.Now().UnixNano())
			b.SetParallelism(4) // misses in flight at once, as dnsperf -c 4 -T 2 keeps them
			b.ReportAllocs()
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
				q := new(dns.Msg)
				for pb.Next() {
					q.SetQuestion(fmt.Sprintf("m%d.%s.miss.example.", seq.Add(1), prefix), dns.TypeA)
					if err := co.WriteMsg(q); err != nil {
						b.Error(err)
						return
					}
					r, err := co.ReadMsg()
					if err != nil {
						b.Error(err)
						return
					}
					if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
						b.Errorf("answer to %s: %s", q.Question[0].Name, r)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// answerA answers every A query with 192.0.2.53, TTL 3600.
func answerA(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(192, 0, 2, 53)}}
	}
	w.WriteMsg(m)
}
