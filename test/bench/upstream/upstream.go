// Package upstream is the fixed authoritative upstream the benchmarks put
// behind the caches under test: a miekg/dns server on loopback that answers
// every A question with one fixed address and TTL and counts what it is asked.
//
// A fixed upstream makes every engine see identical answers at identical
// cost, so the numbers measure the cache in front of it and nothing else,
// and the query count shows how many misses reached it.
package upstream

import (
	"fmt"
	"net"
	"os"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Server is a running upstream. Start it with Start, stop it with Close.
type Server struct {
	ip      net.IP
	ttl     uint32
	queries atomic.Uint64
	udp     *dns.Server
	tcp     *dns.Server
	addr    string
}

// Start listens on addr (UDP and TCP, same port; "127.0.0.1:0" picks a free
// one) and answers A questions for any name with ip and ttl. Other types get
// NOERROR with no answer and an SOA whose minimum is ttl, so negative caching
// is exercised the same way. Only loopback addresses are accepted: the
// benchmarks must not send DNS anywhere else.
func Start(addr string, ip net.IP, ttl uint32) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("upstream address %q: %w", addr, err)
	}
	if h := net.ParseIP(host); h == nil || !h.IsLoopback() {
		return nil, fmt.Errorf("upstream address %q: not a loopback IP", addr)
	}
	return start(addr, ip, ttl)
}

// StartInNamespace is Start for a server inside a network namespace the
// benchmark created (a "pod" behind a DNAT): any address is accepted, but
// only when this process is not in its parent's network namespace (the
// benchmark starts it with "ip netns exec"), so the server is never
// reachable from outside the benchmark.
func StartInNamespace(addr string, ip net.IP, ttl uint32) (*Server, error) {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("upstream: own network namespace: %w", err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()))
	if err != nil {
		return nil, fmt.Errorf("upstream: parent's network namespace: %w", err)
	}
	if self == parent {
		return nil, fmt.Errorf("upstream address %q: not in a network namespace of the benchmark's own", addr)
	}
	return start(addr, ip, ttl)
}

func start(addr string, ip net.IP, ttl uint32) (*Server, error) {
	if ip.To4() == nil {
		return nil, fmt.Errorf("upstream answer %v: not an IPv4 address", ip)
	}
	s := &Server{ip: ip.To4(), ttl: ttl}

	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("upstream listen udp %s: %w", addr, err)
	}
	s.addr = pc.LocalAddr().String()
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("upstream listen tcp %s: %w", s.addr, err)
	}

	udpUp, tcpUp := make(chan struct{}), make(chan struct{})
	s.udp = &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(udpUp) }}
	s.tcp = &dns.Server{Listener: l, Handler: s, NotifyStartedFunc: func() { close(tcpUp) }}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-udpUp
	<-tcpUp
	return s, nil
}

// Addr is the "ip:port" the server listens on.
func (s *Server) Addr() string { return s.addr }

// Queries is the number of queries answered so far.
func (s *Server) Queries() uint64 { return s.queries.Load() }

// Close stops both listeners.
func (s *Server) Close() error {
	errU := s.udp.Shutdown()
	errT := s.tcp.Shutdown()
	if errU != nil {
		return fmt.Errorf("upstream shutdown udp: %w", errU)
	}
	if errT != nil {
		return fmt.Errorf("upstream shutdown tcp: %w", errT)
	}
	return nil
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	switch {
	case q.Qclass != dns.ClassINET:
		m.Rcode = dns.RcodeRefused
	case q.Qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.ttl},
			A:   s.ip,
		}}
	default:
		m.Ns = []dns.RR{&dns.SOA{
			Hdr:     dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
			Ns:      "ns.bench.invalid.",
			Mbox:    "hostmaster.bench.invalid.",
			Serial:  1,
			Refresh: 3600,
			Retry:   600,
			Expire:  86400,
			Minttl:  s.ttl,
		}}
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
	}
	w.WriteMsg(m)
}
