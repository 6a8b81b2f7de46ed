// Package extdns is the lab's "Azure DNS": the VNet resolver that answers
// every name outside the cluster. It is a miekg/dns server that answers any A
// question with an address derived from the name (in TEST-NET-2,
// 198.51.100.0/24) after a configurable delay (timed precisely, see
// delayproxy.Scheduler, and the actual delay recorded), the root NS question
// CoreDNS-style health checks send, and NODATA for other types. It counts
// what it is asked and serves the count in Prometheus text format.
package extdns

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/test/lab/delayproxy"
)

// Server answers external names.
type Server struct {
	ttl     uint32
	delay   delayproxy.Delay
	sched   *delayproxy.Scheduler
	hold    delayproxy.Histogram
	queries atomic.Uint64
}

// New returns a server answering with TTL ttl after a draw of delay, timed
// by a delayproxy.Scheduler (time.Sleep would add up to a millisecond). Close
// releases the scheduler.
func New(ttl uint32, delay delayproxy.Delay) (*Server, error) {
	sched, err := delayproxy.NewScheduler()
	if err != nil {
		return nil, fmt.Errorf("extdns: %w", err)
	}
	return &Server{ttl: ttl, delay: delay, sched: sched}, nil
}

// Close stops the scheduler; queries still held are answered at once.
func (s *Server) Close() error { return s.sched.Close() }

// Queries returns how many queries were answered.
func (s *Server) Queries() uint64 { return s.queries.Load() }

// HoldStats returns the actual delay of the queries answered so far, from
// the handler's start to the reply being written.
func (s *Server) HoldStats() delayproxy.HoldStats {
	st := s.hold.Stats()
	st.Configured = s.delay.String()
	return st
}

// Address returns the A record address the server gives name.
func Address(name string) net.IP {
	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(dns.Fqdn(name))))
	return net.IPv4(198, 51, 100, byte(1+h.Sum32()%254))
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	s.queries.Add(1)
	if d := s.delay.Draw(); d > 0 {
		s.sched.Sleep(d - time.Since(start))
	}
	s.hold.Record(time.Since(start))
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: s.ttl}
	switch {
	case dns.IsSubDomain("cluster.local.", strings.ToLower(q.Name)):
		// The VNet resolver knows nothing of the cluster domain.
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
	case q.Qtype == dns.TypeA:
		hdr.Rrtype = dns.TypeA
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: Address(q.Name)})
	case q.Qtype == dns.TypeNS && q.Name == ".":
		hdr.Rrtype = dns.TypeNS
		m.Answer = append(m.Answer, &dns.NS{Hdr: hdr, Ns: "ns.azuredns.lab."})
	default:
		m.Ns = append(m.Ns, s.soa())
	}
	w.WriteMsg(m)
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns: "ns.azuredns.lab.", Mbox: "hostmaster.azuredns.lab.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.ttl}
}

// ServeHTTP serves the actual hold at /hold (delayproxy.HoldStats as JSON)
// and the query count as a Prometheus counter on every other path.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		delayproxy.HoldHandler(s.HoldStats).ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP labdns_queries_total Queries the lab's external DNS answered.\n# TYPE labdns_queries_total counter\nlabdns_queries_total %d\n", s.Queries())
}
