package fastpath

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkConnHit measures a fast-path answer over UDP loopback: a client
// sends a query the cache answers and reads the answer, one at a time. The
// client shares the CPU with the Conn, so the figure is relative: it is for
// comparing changes to the hit path.
func BenchmarkConnHit(b *testing.B) {
	_, server := serveConn(b, "udp4", "127.0.0.1:0")
	c, err := net.Dial("udp4", server)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	q, err := new(dns.Msg).SetQuestion("www.fast.", dns.TypeA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 512)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(q); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
		if buf[7] != 0xfa {
			b.Fatalf("answered by %#x, want the cache (0xfa)", buf[7])
		}
	}
}
