package clientbudget

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const nxdomain = dns.RcodeNameError

// ClientBudget is the handler of one server block. It sits between the
// cache and the forwarder, so it sees exactly the queries that go upstream.
type ClientBudget struct {
	Next    plugin.Handler
	tracker *Tracker
	// server labels the metrics of queries whose context carries no
	// server (the cache's background refreshes): the block's listener.
	server string

	ctr atomic.Pointer[counters]
}

// counters are the metric children of one server label. A block has one
// server, so they are looked up once instead of on every query (a hash of
// the label values and a map search).
type counters struct {
	server                 string
	client, cache, limited prometheus.Counter
}

// counters returns the counters for server, kept for the common case of
// one server per block.
func (b *ClientBudget) counters(server string) *counters {
	if c := b.ctr.Load(); c != nil && c.server == server {
		return c
	}
	c := &counters{
		server:  server,
		client:  upstreamQueries.WithLabelValues(server, "client"),
		cache:   upstreamQueries.WithLabelValues(server, "cache"),
		limited: limited.WithLabelValues(server),
	}
	b.ctr.Store(c)
	return c
}

// Name implements plugin.Handler.
func (b *ClientBudget) Name() string { return pluginName }

// ServeDNS implements plugin.Handler. A query from a client over its budget
// is not sent on: the cache above answers it stale where it can, and the
// client gets SERVFAIL otherwise.
func (b *ClientBudget) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	server := metrics.WithServer(ctx)
	if server == "" {
		server = b.server
	}
	client := clientOf(w.RemoteAddr())
	if client.Port() == 0 {
		// The cache's own refresh or prefetch: nodecache sends those with
		// a port-0 source, which no real client has. Not charged to anyone
		// (see README.md for why).
		b.tracker.observeRefresh()
		b.counters(server).cache.Inc()
		return plugin.NextOrFailure(b.Name(), b.Next, ctx, w, r)
	}
	var buf [256]byte
	name := buf[:0]
	if len(r.Question) > 0 {
		name = appendLower(name, r.Question[0].Name)
	}
	if !b.tracker.admit(client.Addr(), name) {
		b.counters(server).limited.Inc()
		return dns.RcodeServerFailure, nil
	}
	b.counters(server).client.Inc()
	rw := &rcodeWriter{ResponseWriter: w, rcode: -1}
	rcode, err := plugin.NextOrFailure(b.Name(), b.Next, ctx, rw, r)
	if rw.rcode == nxdomain || (rw.rcode < 0 && rcode == nxdomain) {
		b.tracker.observeNXDOMAIN(client.Addr())
	}
	return rcode, err
}

// ObserveHit implements fastpath.HitObserver: the socket front end reports
// the cache hits it answers, which never reach ServeDNS.
func (b *ClientBudget) ObserveHit(client netip.Addr, name []byte, rcode int) {
	b.tracker.ObserveHit(client, name, rcode)
}

// clientOf is the client's address and port; the zero AddrPort when the
// writer's address is neither UDP nor TCP.
func clientOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return unmap(a.AddrPort())
	case *net.TCPAddr:
		return unmap(a.AddrPort())
	}
	return netip.AddrPort{}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// appendLower appends name, lower-cased, to b.
func appendLower(b []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

// rcodeWriter notes the rcode of the answer written through it.
type rcodeWriter struct {
	dns.ResponseWriter
	rcode int
}

func (w *rcodeWriter) WriteMsg(m *dns.Msg) error {
	w.rcode = m.Rcode
	return w.ResponseWriter.WriteMsg(m)
}

func (w *rcodeWriter) Write(b []byte) (int, error) {
	if len(b) >= 4 {
		w.rcode = int(b[3] & 0x0F)
	}
	return w.ResponseWriter.Write(b)
}
