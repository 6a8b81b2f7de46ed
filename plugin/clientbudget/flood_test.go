package clientbudget_test

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	// Our build: the plugins and the chain order the binary runs.
	_ "github.com/localdns/localdns/internal/plugins"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/plugin/clientbudget"
)

// startServer runs CoreDNS on 127.0.0.1 with nodecache, clientbudget (rate,
// burst) and forward to up, and returns its address.
func startServer(t *testing.T, up *testdns.Upstream, budget, cacheOpts string) string {
	t.Helper()
	port := testbin.FreePorts(t, 1)[0]
	corefile := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    nodecache {
%s
    }
    clientbudget %s
    forward . %s
}
`, port, cacheOpts, budget, up.Addr)
	inst := testdns.StartCoreDNS(t, corefile)
	t.Cleanup(func() { testdns.StopCoreDNS(t, inst) })
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// dialFrom opens a UDP socket from src (a loopback address) to server.
func dialFrom(t *testing.T, src, server string) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(mustAddrPort(t, server)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AddrPort()
}

// TestFloodFromOneClientSparesAnother: one client floods unique names (a
// closed loop with 128 queries in flight, as fast as the server answers);
// meanwhile another client on another loopback address asks new names at
// a normal pace. The other client loses at most 1% (1 s timeout), the
// flooder is limited, and what reaches the upstream stays within the two
// budgets.
func TestFloodFromOneClientSparesAnother(t *testing.T) {
	const (
		rate, burst = 100, 50
		victimN     = 100
		victimGap   = 20 * time.Millisecond // 50 names a second: within its budget
		inFlight    = 128
	)
	up := testdns.Start(t, "192.0.2.1")
	server := startServer(t, up, fmt.Sprintf("%d %d", rate, burst), "")
	before := up.Total()

	flooder := dialFrom(t, "127.0.0.2", server)
	victim := dialFrom(t, "127.0.0.3", server)

	stop := make(chan struct{})
	var sent, answered, servfail atomic.Int64
	var wg sync.WaitGroup
	slots := make(chan struct{}, inFlight)
	wg.Go(func() { // flood sender: a new unique name whenever a slot is free
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case slots <- struct{}{}:
			case <-time.After(time.Second): // answers lost: free a slot anyway
				<-slots
				continue
			}
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("f%d.flood.test.", i), dns.TypeA)
			b, _ := m.Pack()
			if _, err := flooder.Write(b); err != nil {
				return
			}
			sent.Add(1)
		}
	})
	wg.Go(func() { // flood reader
		buf := make([]byte, 1500)
		for {
			flooder.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := flooder.Read(buf)
			if err != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			answered.Add(1)
			if n >= 4 && buf[3]&0x0F == dns.RcodeServerFailure {
				servfail.Add(1)
			}
			select {
			case <-slots:
			default:
			}
		}
	})

	// Let the flood reach full speed before the other client starts.
	deadline := time.Now().Add(5 * time.Second)
	for servfail.Load() < 1000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if servfail.Load() < 1000 {
		t.Fatalf("the flood was not limited: %d sent, %d answered, %d SERVFAIL", sent.Load(), answered.Load(), servfail.Load())
	}

	start := time.Now()
	floodBefore := sent.Load()
	lost := 0
	buf := make([]byte, 1500)
	for i := range victimN {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("v%d.victim.test.", i), dns.TypeA)
		b, _ := m.Pack()
		if _, err := victim.Write(b); err != nil {
			t.Fatal(err)
		}
		victim.SetReadDeadline(time.Now().Add(time.Second))
		ok := false
		for {
			n, err := victim.Read(buf)
			if err != nil {
				break
			}
			r := new(dns.Msg)
			if r.Unpack(buf[:n]) == nil && r.Id == m.Id {
				ok = r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1
				break
			}
		}
		if !ok {
			lost++
		}
		time.Sleep(victimGap)
	}
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()

	floodSent := sent.Load() - floodBefore
	total := up.Total() - before
	victimUp := 0
	for i := range victimN {
		victimUp += up.Count(fmt.Sprintf("v%d.victim.test.", i))
	}
	floodUp := total - int64(victimUp)
	// The flooder's whole run: its burst, then rate a second.
	floodRun := time.Since(start) + time.Duration(float64(floodBefore)/float64(max(sent.Load(), 1))*float64(elapsed))
	allowed := int64(burst + rate*floodRun.Seconds() + rate) // one second of slack for timing
	t.Logf("victim: %d of %d lost over %v; flooder: %d sent during it (%.0f/s), %d SERVFAIL in all; upstream: %d flood + %d victim queries",
		lost, victimN, elapsed.Round(time.Millisecond), floodSent, float64(floodSent)/elapsed.Seconds(), servfail.Load(), floodUp, victimUp)
	if lost > victimN/100 {
		t.Errorf("the other client lost %d of %d names (at most 1%% allowed)", lost, victimN)
	}
	if floodUp > allowed {
		t.Errorf("the flooder got %d queries upstream, its budget allows %d", floodUp, allowed)
	}
	if floodSent < 10*int64(rate*elapsed.Seconds()) {
		t.Errorf("the flood was not a flood: %d queries in %v", floodSent, elapsed)
	}

	top := clientbudget.Shared().Top(10)
	var f, v *clientbudget.ClientStat
	for i, c := range top.Clients {
		switch c.Client {
		case "127.0.0.2":
			f = &top.Clients[i]
		case "127.0.0.3":
			v = &top.Clients[i]
		}
	}
	if f == nil || v == nil {
		t.Fatalf("top does not show both clients: %+v", top.Clients)
	}
	if top.Clients[0].Client != "127.0.0.2" || f.Limited == 0 || v.Limited != 0 || v.Misses < victimN {
		t.Errorf("top: flooder %+v, other %+v", *f, *v)
	}
}
