// Package fastpath answers cache hits at the socket, before CoreDNS's server.
//
// CoreDNS's server (miekg/dns) costs, per query: a goroutine, an unpack into
// a dns.Msg, a walk down the plugin chain, and a pack of the answer. For a
// cache hit none of that is needed: the answer is already stored as wire
// bytes (plugin/nodecache). Conn wraps a listener's UDP socket and is handed
// to dnsserver.Server.ServePacket in its place; its ReadFrom answers every
// query the cache can answer fresh, in place, and returns only the rest to
// the server, which runs them through the plugin chain as usual.
//
// What is skipped for a fast-path answer, and why that is safe: the chain
// above the cache (errors, log, junk, template) never answers a name the
// cache holds, because those answers are not cached; a block with per-query
// logging (queryLogging: Log) is never fast-pathed; and the answer is
// counted in localdns_fastpath_answers_total and in the cache's hit counter,
// since CoreDNS's request counters never see it.
//
// A query longer than the 512 bytes CoreDNS's server reads (legal without
// EDNS0) is handed to the server's plugin chain whole (long.go), on every
// listener, including one without a cache.
//
// The socket I/O is our own (mmsg.go): batched recvmmsg/sendmmsg as raw
// system calls, which cost a third less CPU per query than x/net's batch
// calls at moderate rates (see there for why and the measurements).
package fastpath

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// WireAnswerer is implemented by a cache plugin that can answer a raw query
// from stored wire bytes. AnswerWire writes the full answer into out and
// returns its length, or 0 when the query must go through the plugin chain
// (a miss, a stale entry, an entry due for prefetch, anything unusual).
type WireAnswerer interface {
	AnswerWire(query []byte, tcp bool, out []byte) int
}

// HitObserver is implemented by a plugin that accounts queries per client
// (plugin/clientbudget): it is told of every answer the fast path sends,
// which the plugin chain never sees. ObserveHit must be cheap and must not
// keep name, which is reused.
type HitObserver interface {
	ObserveHit(client netip.Addr, name []byte, rcode int)
}

// answers counts queries answered here; CoreDNS's request counters do not
// see them. Package-level like every CoreDNS plugin's metrics.
var answers = promauto.NewCounterVec(prometheus.CounterOpts{
	Namespace: "localdns",
	Subsystem: "fastpath",
	Name:      "answers_total",
	Help:      "Queries answered from the cache at the socket, before the CoreDNS plugin chain.",
}, []string{"server"})

// Table maps the zones served on one listener address to the cache that
// answers for each.
type Table struct {
	zones   map[string]zone // lower-case, trailing dot
	maxDots int
	counter prometheus.Counter
}

// zone is one block's cache, nil when the block is never fast-pathed, and
// the observer its answers are reported to, if any.
type zone struct {
	wa  WireAnswerer
	obs HitObserver
}

// NewTable builds the table for the server blocks served on addr. It returns
// nil when no block can be fast-pathed.
func NewTable(addr string, configs []*dnsserver.Config) *Table {
	t := &Table{zones: map[string]zone{}, counter: answers.WithLabelValues("dns://" + addr)}
	any := false
	for _, cfg := range configs {
		name := strings.ToLower(cfg.Zone)
		var z zone
		if cfg.Handler("log") == nil {
			if h, ok := cfg.Handler("nodecache").(WireAnswerer); ok {
				z.wa, any = h, true
			}
		}
		z.obs, _ = cfg.Handler("clientbudget").(HitObserver)
		t.zones[name] = z
		if n := strings.Count(name, "."); n > t.maxDots {
			t.maxDots = n
		}
	}
	if !any {
		return nil
	}
	return t
}

// Answer writes the answer to query into out and returns its length, or 0.
func (t *Table) Answer(query []byte, tcp bool, out []byte) int {
	return t.AnswerFrom(query, tcp, out, netip.Addr{})
}

// AnswerFrom is Answer for a query from client, which the block's
// HitObserver (if any) is told of when the query is answered.
func (t *Table) AnswerFrom(query []byte, tcp bool, out []byte, client netip.Addr) int {
	var name [256]byte
	n, ok := lowerQName(query, name[:])
	if !ok {
		return 0
	}
	z := t.match(name[:n])
	if z.wa == nil {
		return 0
	}
	m := z.wa.AnswerWire(query, tcp, out)
	if m > 0 {
		t.counter.Inc()
		if z.obs != nil && m >= 4 {
			z.obs.ObserveHit(client, name[:n], int(out[3]&0x0F))
		}
	}
	return m
}

// match finds the block of the longest zone that name ("a.b.c.") is in.
func (t *Table) match(name []byte) zone {
	for i := 0; i < len(name); {
		if z, ok := t.zones[string(name[i:])]; ok {
			return z
		}
		j := indexByte(name[i:], '.')
		if j < 0 {
			break
		}
		i += j + 1
	}
	return t.zones["."]
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// lowerQName copies the question name of a one-question query, lower-cased
// and in presentation form without escapes ("a.b."), into buf. Names with
// compression, escapes-worthy bytes (dots inside labels) or more than one
// question are left to the plugin chain.
func lowerQName(q []byte, buf []byte) (int, bool) {
	if len(q) < 12+5 || q[4] != 0 || q[5] != 1 { // QDCOUNT must be 1
		return 0, false
	}
	off, n := 12, 0
	for {
		if off >= len(q) {
			return 0, false
		}
		l := int(q[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(q) || n+l+1 > len(buf) {
			return 0, false
		}
		for _, c := range q[off : off+l] {
			if c == '.' {
				return 0, false
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[n] = c
			n++
		}
		buf[n] = '.'
		n++
		off += l
	}
	if n == 0 {
		buf[0] = '.'
		n = 1
	}
	return n, true
}

// batchSize is how many datagrams one recvmmsg/sendmmsg moves at most: a
// busy listener pays one system call per batch instead of two per query.
const batchSize = 32

// Conn is a listener's UDP socket with the fast path in front: ReadFrom
// reads datagrams in batches (recvmmsg), answers what the cache can with
// batched writes (sendmmsg), and returns the other queries one at a time to
// the caller (the CoreDNS server's read loop), which answers them through
// the plugin chain. A query longer than the caller's buffer goes to the
// chain of srv directly (long.go).
type Conn struct {
	*net.UDPConn
	table *Table // nil: no block is fast-pathed
	srv   *dnsserver.Server
	raw   syscall.RawConn

	// Long queries in flight, waited for by Close.
	longMu     sync.Mutex
	longClosed bool
	long       sync.WaitGroup

	in     *batch // read batch
	inN    int    // datagrams in the read batch
	inNext int    // next one to look at
	out    *batch // answers waiting to be sent
	outN   int
}

// Wrap puts the fast path in front of pc, which srv is to serve
// (srv.ServePacket): cache hits are answered from table (nil: none is), and
// queries too long for srv's read buffer go to srv's plugin chain whole.
// With a nil table and a nil srv, or a socket without raw access, it
// returns pc.
func Wrap(pc *net.UDPConn, table *Table, srv *dnsserver.Server) net.PacketConn {
	if table == nil && srv == nil {
		return pc
	}
	raw, err := pc.SyscallConn()
	if err != nil {
		return pc
	}
	return &Conn{UDPConn: pc, table: table, srv: srv, raw: raw, in: newBatch(batchSize, 65535), out: newBatch(batchSize, 65535)}
}

// ReadFrom implements net.PacketConn. It is called from one goroutine (the
// server's read loop), so the batches need no lock.
func (c *Conn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		if c.inNext == c.inN {
			c.flush() // answers go out before we may block
			n, err := c.in.recv(c.raw)
			if err != nil {
				return 0, nil, err
			}
			c.inN, c.inNext = n, 0
		}
		i := c.inNext
		c.inNext++
		query := c.in.payload(i)
		if c.table != nil {
			if n := c.table.AnswerFrom(query, false, c.out.bufs[c.outN], c.in.client(i)); n > 0 {
				c.out.setReply(c.outN, n, c.in, i)
				c.outN++
				if c.outN == batchSize {
					c.flush()
				}
				continue
			}
		}
		c.flush()
		addr := c.in.addr(i)
		if addr == nil {
			continue // not a UDP peer: nothing to answer
		}
		if len(query) > len(p) && c.srv != nil {
			c.serveLong(query, addr) // copies query
			continue
		}
		return copy(p, query), addr, nil
	}
}

// flush sends the pending answers. An answer the kernel refuses is dropped
// like any lost datagram; the client retries.
func (c *Conn) flush() {
	c.out.send(c.raw, c.outN)
	c.outN = 0
}
