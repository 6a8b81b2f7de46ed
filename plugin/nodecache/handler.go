package nodecache

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/pkg/dnstest"

	"github.com/miekg/dns"
)

// Nodecache is the plugin handler of one server block. It shares the
// process-wide Store with every other block and keeps its answers apart
// through its Namespace.
type Nodecache struct {
	Next plugin.Handler

	store *Store
	ns    Namespace
	pol   policy
	label string // server label for answers served outside ServeDNS

	ctr atomic.Pointer[counters]
}

// Name implements plugin.Handler.
func (h *Nodecache) Name() string { return "nodecache" }

// ServeDNS implements plugin.Handler.
func (h *Nodecache) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	proto := UDP
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = TCP
	} else if opt := r.IsEdns0(); opt != nil && opt.UDPSize() > h.pol.maxUDP {
		// As the bufsize plugin does: every answer written with WriteMsg
		// (ours and the next plugins') is fitted to the request's buffer
		// size by CoreDNS's ScrubWriter, which thus applies max_udp_size.
		opt.SetUDPSize(h.pol.maxUDP)
	}
	var q query
	if err := queryFromMsg(r, &q); err != nil || !q.cacheable() {
		return plugin.NextOrFailure(h.Name(), h.Next, ctx, w, r)
	}
	q.setLimit(proto, h.pol.maxUDP)
	s := h.store
	now := s.now()
	flags := queryFlags(q.do, q.cd)
	key := s.keys.keyOf(h.ns, flags, q.qtype, q.qclass, q.wireName())
	c := h.counters(metrics.WithServer(ctx))

	if e := s.get(key, h.ns, flags, q.qtype, q.qclass, q.wireName()); e != nil {
		nowN := now.UnixNano()
		fresh, stale := e.servable(nowN)
		switch {
		case fresh:
			c.hits.Inc()
			h.maybePrefetch(ctx, e, nowN, c, proto)
			return writeEntry(w, e, &q, uint32(max(e.remaining(nowN), 0)), false)
		case stale && h.pol.mode == staleImmediate:
			h.refreshAsync(ctx, e, c, proto, false)
			c.stale.Inc()
			return writeEntry(w, e, &q, staleTTL, true)
		case stale && h.pol.mode == staleVerify:
			if !h.recheckPending(e) {
				if res, ok := h.verify(ctx, w, r, &q, e, c); ok {
					return h.writeResult(w, r, &q, res)
				}
			}
			c.stale.Inc()
			return writeEntry(w, e, &q, staleTTL, true)
		case !stale:
			s.remove(e) // past its stale window: dead weight
		}
	}

	c.misses.Inc()
	fk := makeFlightKey(h.ns, flags, q.qtype, q.qclass, q.wireName())
	res, shared := s.flight.do(fk, func() result {
		return h.exchange(ctx, w.RemoteAddr(), w.LocalAddr(), upstreamQuery(r, &q), &q)
	})
	if shared {
		c.coalesced.Inc()
		if proto == TCP && res.entry == nil && res.msg != nil && res.msg.Truncated {
			// The leader asked over UDP and got a truncated answer; a TCP
			// client is owed the whole answer, so it asks for itself.
			res = h.exchange(ctx, w.RemoteAddr(), w.LocalAddr(), upstreamQuery(r, &q), &q)
		}
	}
	return h.writeResult(w, r, &q, res)
}

// counters returns the counters for server, cached for the common case of
// one server per block.
func (h *Nodecache) counters(server string) *counters {
	if c := h.ctr.Load(); c != nil && c.server == server {
		return c
	}
	c := newCounters(server)
	h.ctr.Store(c)
	return c
}

// writeEntry renders e for q into a pooled buffer and writes it. A client
// that asked for NSID gets a dns.Msg so that the nsid plugin can add it.
func writeEntry(w dns.ResponseWriter, e *entry, q *query, ttl uint32, stale bool) (int, error) {
	n, _ := renderedLen(e, q, stale)
	bp := getBuf(n)
	defer putBuf(bp)
	n, err := render(*bp, e, q, ttl, stale)
	if err != nil {
		return dns.RcodeServerFailure, err
	}
	if rcode := int(e.wire[3] & 0x0F); rcode != dns.RcodeSuccess {
		noteRcode(w, rcode)
	}
	if q.nsid {
		m := new(dns.Msg)
		if err := m.Unpack((*bp)[:n]); err != nil {
			return dns.RcodeServerFailure, err
		}
		err = w.WriteMsg(m)
	} else {
		_, err = w.Write((*bp)[:n])
	}
	if err != nil {
		return dns.RcodeServerFailure, err
	}
	return dns.RcodeSuccess, nil
}

// noteRcode tells the recorders of the prometheus and log plugins (which
// wrap w) the rcode of an answer written with Write: they learn it only from
// WriteMsg, and would count a cached NXDOMAIN as NOERROR.
func noteRcode(w dns.ResponseWriter, rcode int) {
	for range 8 {
		var rec *dnstest.Recorder
		switch r := w.(type) {
		case *dnstest.Recorder:
			rec = r
		case *metrics.Recorder:
			rec = r.Recorder
		default:
			return
		}
		rec.Rcode = rcode
		w = rec.ResponseWriter
	}
}

// writeResult answers q with the outcome of an upstream exchange: from the
// new entry when it was cached, else the upstream message with the client's
// ID, question and a clean OPT record; if the next plugin wrote nothing its
// rcode and error go back to the server, which answers SERVFAIL.
func (h *Nodecache) writeResult(w dns.ResponseWriter, r *dns.Msg, q *query, res result) (int, error) {
	if res.entry != nil {
		return writeEntry(w, res.entry, q, uint32(max(res.entry.remaining(h.store.now().UnixNano()), 0)), false)
	}
	if res.msg == nil {
		return res.rcode, res.err
	}
	m := res.msg.Copy()
	sanitizeTTLs(m)
	m.Id = r.Id
	m.Question = []dns.Question{r.Question[0]}
	m.CheckingDisabled = r.CheckingDisabled
	if !q.do && !q.ad {
		m.AuthenticatedData = false
	}
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	if q.edns {
		m.SetEdns0(q.adv, q.do)
	}
	if err := w.WriteMsg(m); err != nil {
		return dns.RcodeServerFailure, err
	}
	return dns.RcodeSuccess, nil
}

// upstreamQuery is the query sent to the next plugin: the client's, with our
// own EDNS0 record (our buffer size, the client's DO bit, none of its
// options) and AD set so the upstream reports validation for the cache.
func upstreamQuery(r *dns.Msg, q *query) *dns.Msg {
	up := r.Copy()
	up.Extra = nil
	up.AuthenticatedData = true
	up.SetEdns0(advertisedUDPSize, q.do)
	return up
}

// exchange sends up through the rest of the chain, captures the answer and
// stores it when it is cacheable.
func (h *Nodecache) exchange(ctx context.Context, remote, local net.Addr, up *dns.Msg, q *query) result {
	cw := &captureWriter{remote: remote, local: local}
	rcode, err := plugin.NextOrFailure(h.Name(), h.Next, ctx, cw, up)
	res := result{msg: cw.msg, rcode: rcode, err: err}
	if cw.msg == nil {
		return res
	}
	s := h.store
	if e, _ := newEntry(cw.msg, h.ns, q, &h.pol, s.now()); e != nil && s.put(e) {
		res.entry = e
	}
	return res
}

// verify asks upstream for a stale entry and waits at most verify_timeout.
// It reports the result when it is usable; the exchange goes on in the
// background either way and stores whatever it gets.
func (h *Nodecache) verify(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, q *query, e *entry, c *counters) (result, bool) {
	done := make(chan result, 1)
	bg := context.WithoutCancel(ctx)
	up := upstreamQuery(r, q)
	qc := *q
	remote, local := w.RemoteAddr(), w.LocalAddr()
	go func() {
		res, _ := h.store.flight.do(e.flightKey(), func() result { return h.exchange(bg, remote, local, up, &qc) })
		if res.failed() {
			h.refreshFailed(e, c)
		}
		done <- res
	}()
	t := time.NewTimer(h.pol.verifyTimeout)
	defer t.Stop()
	select {
	case res := <-done:
		return res, !res.failed()
	case <-t.C:
		return result{}, false
	}
}

// captureWriter keeps the answer of the next plugin instead of writing it.
type captureWriter struct {
	remote, local net.Addr
	msg           *dns.Msg
}

func (w *captureWriter) LocalAddr() net.Addr  { return w.local }
func (w *captureWriter) RemoteAddr() net.Addr { return w.remote }
func (w *captureWriter) WriteMsg(m *dns.Msg) error {
	w.msg = m
	return nil
}

func (w *captureWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	w.msg = m
	return len(b), nil
}
func (w *captureWriter) Close() error        { return nil }
func (w *captureWriter) TsigStatus() error   { return nil }
func (w *captureWriter) TsigTimersOnly(bool) {}
func (w *captureWriter) Hijack()             {}
