package nodecache

import (
	"context"
	"time"

	"github.com/miekg/dns"
)

// HitStatus tells a front-end what ServeWire did.
type HitStatus uint8

const (
	// Miss: nothing was written; hand the query to the CoreDNS server.
	Miss HitStatus = iota
	// Hit: a fresh answer was written to out.
	Hit
	// Stale: an expired answer within the stale window was written (TTL 30,
	// EDE 3) and a background refresh was started (serve_stale immediate).
	Stale
)

func (s HitStatus) String() string {
	return [...]string{"miss", "hit", "stale"}[s]
}

// ServeWire answers a raw DNS query from the cache without building a
// dns.Msg: it parses only the header, the question and the OPT record of
// msg, looks the key up in namespace ns and writes the answer into out,
// rewriting only ID, flags, question casing and TTLs of the stored bytes.
// proto decides truncation: a UDP answer larger than the client's EDNS0
// size (512 without EDNS0), or than the block's max_udp_size, keeps the
// whole records that fit and has TC set.
//
// It returns the answer's length and Hit or Stale, or 0 and Miss when the
// front-end must hand the query to the CoreDNS server: no entry, an entry
// past its stale window, serve_stale verify or off for an expired entry,
// out too small (64 KiB always suffices), an NSID request, or a query that
// is not a plain one-question QUERY with at most an OPT record.
// It is safe for concurrent use and does not allocate.
func (s *Store) ServeWire(ns Namespace, msg []byte, proto Proto, now time.Time, out []byte) (int, HitStatus) {
	var q query
	// Only class IN: CoreDNS's server refuses other classes unless the chaos
	// plugin is loaded, which the chain then handles.
	if err := parseQuery(msg, &q); err != nil || !q.cacheable() || q.nsid || q.qclass != dns.ClassINET {
		return 0, Miss
	}
	flags := queryFlags(q.do, q.cd)
	key := s.keys.keyOf(ns, flags, q.qtype, q.qclass, q.wireName())
	e := s.get(key, ns, flags, q.qtype, q.qclass, q.wireName())
	if e == nil {
		return 0, Miss
	}
	h := s.handler(ns)
	maxUDP := uint16(advertisedUDPSize)
	if h != nil {
		maxUDP = h.pol.maxUDP
	}
	q.setLimit(proto, maxUDP)
	nowN := now.UnixNano()
	fresh, stale := e.servable(nowN)
	switch {
	case fresh:
		n, err := render(out, e, &q, uint32(max(e.remaining(nowN), 0)), false)
		if err != nil {
			return 0, Miss
		}
		if h != nil {
			c := h.counters(h.label)
			c.hits.Inc()
			h.maybePrefetch(context.Background(), e, nowN, c, proto)
		}
		return n, Hit
	case stale && h != nil && h.pol.mode == staleImmediate:
		n, err := render(out, e, &q, staleTTL, true)
		if err != nil {
			return 0, Miss
		}
		c := h.counters(h.label)
		c.stale.Inc()
		h.refreshAsync(context.Background(), e, c, proto, false)
		return n, Stale
	}
	return 0, Miss
}

// handler returns the block that owns ns, or nil.
func (s *Store) handler(ns Namespace) *Nodecache {
	return (*s.handlers.Load())[ns]
}

// unregister removes h unless a newer block took its namespace over.
func (s *Store) unregister(h *Nodecache) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	old := *s.handlers.Load()
	if old[h.ns] != h {
		return
	}
	m := make(map[Namespace]*Nodecache, len(old))
	for k, v := range old {
		if k != h.ns {
			m[k] = v
		}
	}
	s.handlers.Store(&m)
}

// register makes h the owner of its namespace (the newest block wins on a
// reload).
func (s *Store) register(h *Nodecache) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	old := *s.handlers.Load()
	m := make(map[Namespace]*Nodecache, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[h.ns] = h
	s.handlers.Store(&m)
}
