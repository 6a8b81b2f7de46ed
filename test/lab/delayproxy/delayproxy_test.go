package delayproxy

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// echoServer answers every A question with a TXT-free A record whose address
// encodes nothing; the test checks names and IDs.
func echoServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(192, 0, 2, 1)})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestProxyDelaysAndRoutesReplies(t *testing.T) {
	up := echoServer(t)
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(ln, up, 2, Delay{Base: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Timeout: 2 * time.Second}
			m := new(dns.Msg)
			name := fmt.Sprintf("q%d.example.", i)
			m.SetQuestion(name, dns.TypeA)
			r, rtt, err := c.Exchange(m, ln.LocalAddr().String())
			switch {
			case err != nil:
				errs <- err
			case r.Id != m.Id || r.Question[0].Name != name || len(r.Answer) != 1:
				errs <- fmt.Errorf("query %s id %d: got reply %s id %d", name, m.Id, r.Question[0].Name, r.Id)
			case rtt < 20*time.Millisecond:
				errs <- fmt.Errorf("query %s answered in %v, before the 20ms delay", name, rtt)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p.Queries() != 40 {
		t.Errorf("proxy passed on %d queries, want 40", p.Queries())
	}
}

func TestDelayDraw(t *testing.T) {
	d := Delay{Base: time.Millisecond, Jitter: 200 * time.Microsecond}
	var sum time.Duration
	const n = 20000
	for range n {
		v := d.Draw()
		if v < time.Millisecond {
			t.Fatalf("draw %v below base", v)
		}
		sum += v - time.Millisecond
	}
	if mean := sum / n; mean < 180*time.Microsecond || mean > 220*time.Microsecond {
		t.Errorf("mean jitter %v, want about 200µs", mean)
	}
}
