package nodecache

import (
	"context"
	"net"
	"time"

	"github.com/miekg/dns"
)

// failureRecheck is how long after a failed refresh an entry is served
// stale without asking upstream again (RFC 8767 section 5 suggests 30 s), so
// a dead upstream is not hammered and verify does not delay every query.
const failureRecheck = 30 * time.Second

var (
	bgUDPAddr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	bgTCPAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
)

// maybePrefetch refreshes e in the background when it has been hit at least
// prefetch times and less than 10% of its TTL is left, so a hot name never
// expires. The hit counter saturates at the threshold: a hot entry costs no
// further atomic writes.
func (h *Nodecache) maybePrefetch(ctx context.Context, e *entry, now int64, c *counters, proto Proto) {
	if h.pol.prefetch == 0 {
		return
	}
	if hits := e.hits.Load(); hits < h.pol.prefetch {
		if e.hits.Add(1) < h.pol.prefetch {
			return
		}
	}
	if rem := e.remaining(now); rem*10 >= int64(e.ttl) {
		return
	}
	h.refreshAsync(ctx, e, c, proto, true)
}

// refreshAsync starts one background refresh of e unless one is running.
// A refresh that fails leaves e in place: a stale entry is never evicted
// because its upstream is down.
func (h *Nodecache) refreshAsync(ctx context.Context, e *entry, c *counters, proto Proto, prefetch bool) {
	if h.recheckPending(e) || !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	select {
	case h.store.refreshes <- struct{}{}:
	default:
		e.refreshing.Store(false) // at the bound: stays stale for now
		return
	}
	if prefetch {
		c.prefetches.Inc()
	}
	bg := context.WithoutCancel(ctx)
	go func() {
		defer func() { <-h.store.refreshes }()
		defer e.refreshing.Store(false)
		res := h.refresh(bg, e, proto)
		if res.failed() || res.entry == nil {
			h.refreshFailed(e, c)
		}
	}()
}

// recheckPending reports whether e's last refresh failed less than
// failureRecheck ago.
func (h *Nodecache) recheckPending(e *entry) bool {
	return h.store.now().UnixNano() < e.retryAfter.Load()
}

func (h *Nodecache) refreshFailed(e *entry, c *counters) {
	e.retryAfter.Store(h.store.now().Add(failureRecheck).UnixNano())
	c.refreshFailure.Inc()
}

// refresh queries upstream for e's key (coalesced with client misses) and
// retries over TCP when the UDP answer was truncated.
func (h *Nodecache) refresh(ctx context.Context, e *entry, proto Proto) result {
	return h.refreshKey(ctx, e.name, e.qtype, e.qclass, e.flags, proto)
}

// refreshKey is refresh for a key that need not be cached yet (a pinned
// name): wire name, type, class and flags.
func (h *Nodecache) refreshKey(ctx context.Context, wireName []byte, qtype, qclass uint16, flags uint8, proto Proto) result {
	name, _, err := dns.UnpackDomainName(wireName, 0)
	if err != nil {
		return result{err: err}
	}
	var q query
	q.qtype, q.qclass = qtype, qclass
	q.nameLen = copy(q.name[:], wireName)
	q.do, q.cd, q.edns = flags&flagDO != 0, flags&flagCD != 0, true
	r := new(dns.Msg)
	r.SetQuestion(name, qtype)
	r.Question[0].Qclass = qclass
	r.CheckingDisabled = q.cd
	up := upstreamQuery(r, &q)

	var remote net.Addr = bgUDPAddr
	if proto == TCP {
		remote = bgTCPAddr
	}
	fk := makeFlightKey(h.ns, flags, qtype, qclass, wireName)
	res, _ := h.store.flight.do(fk, func() result { return h.exchange(ctx, remote, bgUDPAddr, up, &q) })
	if res.msg != nil && res.msg.Truncated && proto == UDP {
		res, _ = h.store.flight.do(fk, func() result { return h.exchange(ctx, bgTCPAddr, bgTCPAddr, up, &q) })
	}
	return res
}
