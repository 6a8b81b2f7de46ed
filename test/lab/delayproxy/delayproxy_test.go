package delayproxy

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

// echoServer is a DNS server on loopback that answers every A question;
// the tests check names and IDs.
func echoServer(t *testing.T) string {
	return testdns.Start(t, "192.0.2.1").Addr
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
	if st := p.HoldStats(); st.Count != 40 || st.P50US < 20000 || st.Configured != "20ms + exp(mean 0s)" {
		t.Errorf("hold stats %+v, want 40 queries held 20ms or more", st)
	}
}

// startProxy starts a proxy on 127.0.0.1 in front of up.
func startProxy(t *testing.T, up string, d Delay) (*Proxy, string) {
	t.Helper()
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(ln, up, 2, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, ln.LocalAddr().String()
}

// ask sends query number i through the proxy at addr and returns the
// query, the reply and the round trip.
func ask(t *testing.T, addr string, i int) (q, r *dns.Msg, rtt time.Duration) {
	t.Helper()
	c := &dns.Client{Timeout: 2 * time.Second}
	q = new(dns.Msg)
	q.SetQuestion(fmt.Sprintf("q%d.example.", i), dns.TypeA)
	r, rtt, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatal(err)
	}
	return q, r, rtt
}

// TestProxyHoldPrecision checks the actual hold of a 1 ms hop: the proxy
// measures it itself, and the client sees the same.
func TestProxyHoldPrecision(t *testing.T) {
	up := echoServer(t)
	p, addr := startProxy(t, up, Delay{Base: time.Millisecond})
	var rtts Histogram
	for i := range 300 {
		_, _, rtt := ask(t, addr, i)
		if rtt < time.Millisecond {
			t.Fatalf("answered in %v, before the 1ms hold", rtt)
		}
		rtts.Record(rtt)
	}
	st := p.HoldStats()
	t.Logf("hold %s; client rtt p50 %.0fµs p99 %.0fµs", st, rtts.Stats().P50US, rtts.Stats().P99US)
	if st.Count != 300 {
		t.Errorf("hold count %d, want 300", st.Count)
	}
	if st.P50US < 1000 || st.P50US > 1300 {
		t.Errorf("p50 hold %.0fµs, want 1000-1300µs", st.P50US)
	}
}

func TestProxyZeroDelay(t *testing.T) {
	up := echoServer(t)
	p, addr := startProxy(t, up, Delay{})
	for i := range 50 {
		m, r, _ := ask(t, addr, i)
		if r.Id != m.Id {
			t.Fatalf("reply id %d, want %d", r.Id, m.Id)
		}
	}
	st := p.HoldStats()
	t.Logf("zero delay: %s", st)
	if st.Count != 50 || st.P50US > 100 {
		t.Errorf("hold stats %+v, want 50 queries passed on at once (p50 under 100µs)", st)
	}
}

// TestProxyKeepsOrder sends a burst from one socket through a 2 ms hop with
// one upstream socket, and checks that the upstream (one reader, in arrival
// order) sees it in the order it was sent, with the IDs rewritten, and that
// the client gets its own ID back on every reply.
func TestProxyKeepsOrder(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	seen := make(chan []string, 1)
	ids := map[uint16]bool{}
	const n = 100
	go func() {
		var names []string
		buf := make([]byte, 512)
		for range n {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				break
			}
			r := new(dns.Msg)
			if err := r.Unpack(buf[:k]); err != nil {
				break
			}
			names = append(names, r.Question[0].Name)
			ids[r.Id] = true
			b, _ := new(dns.Msg).SetReply(r).Pack()
			pc.WriteTo(b, from)
		}
		seen <- names
	}()
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(ln, pc.LocalAddr().String(), 1, Delay{Base: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	conn, err := net.Dial("udp", ln.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var sent []string
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("o%d.example.", i), dns.TypeA)
		m.Id = 7 // the same client ID for all: the proxy must tell them apart
		b, _ := m.Pack()
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m.Question[0].Name)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	for range n {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:k]); err != nil || r.Id != 7 {
			t.Fatalf("reply %v id %d, want id 7 (%v)", r.Question, r.Id, err)
		}
	}
	got := <-seen
	if !slices.Equal(got, sent) {
		t.Errorf("upstream order %v, want %v", got, sent)
	}
	if len(ids) != n {
		t.Errorf("upstream saw %d distinct IDs for %d queries: IDs not rewritten", len(ids), n)
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
