// Package testdns starts real DNS servers on loopback for tests: upstreams
// that answer with a fixed address, count queries, and can be told to fail.
//
// Tests never send DNS anywhere else; see the network rule in README.md.
package testdns

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Behavior selects how an Upstream answers.
type Behavior int32

// Behaviors.
const (
	Answer   Behavior = iota // A record with the upstream's address, TTL 300
	ServFail                 // SERVFAIL
	Silent                   // never answers
)

// Upstream is a miekg/dns server on 127.0.0.1 (UDP and TCP, same port).
type Upstream struct {
	Addr   string // ip:port
	Answer net.IP // the A record it gives every name

	behavior atomic.Int32
	mu       sync.Mutex
	queries  map[string]int // qname (lower case) -> count
	total    atomic.Int64
	delay    atomic.Int64 // ns
	stop     func()
}

// Start starts an upstream on 127.0.0.1 that answers every A query with
// answer; it stops when the test ends.
func Start(t testing.TB, answer string) *Upstream {
	t.Helper()
	u := NewUpstream(answer)
	u.Addr, u.stop = Serve(t, u)
	return u
}

// NewUpstream returns an upstream that answers every A query with answer,
// not yet serving: serve it with ServeConns on sockets of your own (and set
// Addr), e.g. inside a network namespace.
func NewUpstream(answer string) *Upstream {
	return &Upstream{Answer: net.ParseIP(answer).To4(), queries: map[string]int{}, stop: func() {}}
}

// Serve runs h on UDP and TCP of one free port of 127.0.0.1 until the test
// ends, and returns the address and a function that stops it earlier.
func Serve(t testing.TB, h dns.Handler) (addr string, stop func()) {
	t.Helper()
	pc, ln, err := listenPair()
	if err != nil {
		t.Fatal(err)
	}
	return pc.LocalAddr().String(), ServeConns(t, pc, ln, h)
}

// ServeConns runs h on pc and ln (sockets the caller opened, e.g. inside a
// network namespace) until the test ends, and returns a function that
// stops it earlier. It returns once both servers accept queries.
func ServeConns(t testing.TB, pc net.PacketConn, ln net.Listener, h dns.Handler) (stop func()) {
	t.Helper()
	var servers []*dns.Server
	// UDPSize: read any datagram whole, as unbound and BIND do (miekg's
	// default of 512 bytes answers a longer query without EDNS0 FORMERR).
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h, UDPSize: dns.MaxMsgSize}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		servers = append(servers, s)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			for _, s := range servers {
				s.Shutdown()
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// listenPair binds UDP and TCP on one free port of 127.0.0.1. The UDP port
// the kernel picks may be taken for TCP (a connection in TIME_WAIT), so it
// tries again with another port.
func listenPair() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %w", lastErr)
}

// Stop shuts the upstream down.
func (u *Upstream) Stop() { u.stop() }

// Set changes how the upstream answers from now on.
func (u *Upstream) Set(b Behavior) { u.behavior.Store(int32(b)) }

// SetDelay delays every answer by d.
func (u *Upstream) SetDelay(d time.Duration) { u.delay.Store(int64(d)) }

// Count returns how many queries for name (any case, with or without the
// trailing dot) arrived.
func (u *Upstream) Count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[dns.Fqdn(strings.ToLower(name))]
}

// Total returns how many queries arrived.
func (u *Upstream) Total() int64 { return u.total.Load() }

// ServeDNS implements dns.Handler.
func (u *Upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) == 1 {
		u.mu.Lock()
		u.queries[strings.ToLower(r.Question[0].Name)]++
		u.mu.Unlock()
	}
	u.total.Add(1)
	if d := u.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	m := new(dns.Msg)
	m.SetReply(r)
	switch Behavior(u.behavior.Load()) {
	case Silent:
		return
	case ServFail:
		m.Rcode = dns.RcodeServerFailure
	default:
		if len(r.Question) == 1 {
			q := r.Question[0]
			switch q.Qtype {
			case dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: u.Answer})
			case dns.TypePTR:
				m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 300}, Ptr: "host-" + u.Answer.String() + "."})
			case dns.TypeNS:
				m.Answer = append(m.Answer, &dns.NS{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 300}, Ns: "ns.test."})
			}
		}
	}
	w.WriteMsg(m)
}

// Query sends one query over network ("udp" or "tcp") to addr.
func Query(t testing.TB, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	r, err := Exchange(network, addr, name, qtype)
	if err != nil {
		t.Fatalf("query %s %s over %s to %s: %v", name, dns.TypeToString[qtype], network, addr, err)
	}
	return r
}

// Exchange sends one query and returns the answer or the error.
func Exchange(network, addr, name string, qtype uint16) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// QueryFromPorts sends query (wire format) to dst n times, each time from a
// socket of its own bound to src and ports firstPort, firstPort+1, ... (so
// every query is a new flow for conntrack), and returns how many were
// answered within a second. It uses the network namespace of the calling
// OS thread.
func QueryFromPorts(src net.IP, firstPort int, dst *net.UDPAddr, query []byte, n int) (int, error) {
	buf := make([]byte, 512)
	answered := 0
	for i := 0; i < n; i++ {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: src, Port: firstPort + i}, dst)
		if err != nil {
			return answered, err
		}
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(query); err == nil {
			if m, err := c.Read(buf); err == nil && m > 12 {
				answered++
			}
		}
		c.Close()
	}
	return answered, nil
}
