package nodecache

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Pinned names ("pin NAME..."): names that must resolve whatever happens
// upstream (a node's registry, package mirror, API server). AKS keeps them
// in a hosts file refreshed by a timer; here they are cache entries that
//
//   - are never evicted for memory (they count against the budget, but
//     eviction passes over them: evictLocked),
//   - are refreshed from the upstreams every pin_refresh interval, A and
//     AAAA each, in the background, whether or not anyone asks,
//   - are served stale for as long as the upstreams fail: no stale window
//     (entry.servable), in blocks whose serve_stale is immediate or verify,
//   - survive a restart in the snapshot (written with the longest stale
//     window a snapshot holds, so a restore keeps them).
//
// Only the plain form of a name is pinned: no DO or CD bit, class IN, as
// the host's resolver and kubelet ask. The same name with DO is cached as
// any other.

// defaultPinRefresh is AKS's hostsPluginRefreshIntervalInSeconds default.
const (
	defaultPinRefresh = 15 * time.Minute
	minPinRefresh     = 100 * time.Millisecond
	// pinTimeout bounds one refresh of one name and type; the upstream
	// plugin answers well within it (its own deadline is 2 s).
	pinTimeout = 30 * time.Second
)

// pinTypes are the types refreshed for every pinned name.
var pinTypes = [...]uint16{dns.TypeA, dns.TypeAAAA}

// pinRef is one pinned key: enough to tell a hash collision from the
// pinned entry.
type pinRef struct {
	ns    Namespace
	qtype uint16
	name  []byte // lower-case wire name
}

// pinSet is the store's set of pinned keys, rebuilt (copy on write) when a
// block with pins starts or stops; eviction and put read it without a lock.
type pinSet map[uint64]pinRef

// pinState is the store's registry of pinning blocks.
type pinState struct {
	mu     sync.Mutex
	owners map[*Nodecache]pinSet
}

// isPinned reports whether e is the entry of a pinned key.
func (s *Store) isPinned(e *entry) bool {
	set := s.pins.Load()
	if set == nil {
		return false
	}
	ref, ok := (*set)[e.key]
	return ok && e.matches(ref.ns, 0, ref.qtype, dns.ClassINET, ref.name)
}

// markPinned sets e's pinned bit from the pin set; put calls it for every
// entry it admits, so a refreshed or newly asked pinned name stays pinned.
func (s *Store) markPinned(e *entry) {
	if s.pins.Load() != nil {
		e.pinned.Store(s.isPinned(e))
	}
}

// setPins registers the pins of block h (its start) and marks the cached
// entries of its keys.
func (s *Store) setPins(h *Nodecache, names [][]byte) {
	own := pinSet{}
	for _, name := range names {
		for _, t := range pinTypes {
			own[s.keys.keyOf(h.ns, 0, t, dns.ClassINET, name)] = pinRef{ns: h.ns, qtype: t, name: name}
		}
	}
	s.pinReg.mu.Lock()
	defer s.pinReg.mu.Unlock()
	if s.pinReg.owners == nil {
		s.pinReg.owners = map[*Nodecache]pinSet{}
	}
	s.pinReg.owners[h] = own
	s.updatePinsLocked()
}

// resetPins forgets every block's pins: a new CoreDNS instance (start or
// reload) calls it before its blocks register theirs, so pins a reload
// dropped are unpinned. A stopping instance leaves its pins in place, so
// the snapshot written at the final shutdown still has them pinned.
func (s *Store) resetPins() {
	s.pinReg.mu.Lock()
	defer s.pinReg.mu.Unlock()
	s.pinReg.owners = nil
	s.updatePinsLocked()
}

// updatePinsLocked rebuilds the pin set from the owners and re-marks the
// cached entries whose pinning changed.
func (s *Store) updatePinsLocked() {
	next := pinSet{}
	for _, set := range s.pinReg.owners {
		maps.Copy(next, set)
	}
	old := s.pins.Load()
	if len(next) == 0 {
		s.pins.Store(nil) // put skips the lookup
	} else {
		s.pins.Store(&next)
	}
	touched := maps.Clone(next)
	if old != nil {
		maps.Copy(touched, *old)
	}
	for k := range touched {
		if e := s.peek(k); e != nil {
			e.pinned.Store(s.isPinned(e))
		}
	}
}

// pinner refreshes one block's pinned names on its interval.
type pinner struct {
	h        *Nodecache
	names    [][]byte // lower-case wire names
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}
}

// parsePins turns the names of a pin directive into lower-case wire names.
func parsePins(args []string) ([][]byte, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("pin needs at least one name")
	}
	out := make([][]byte, 0, len(args))
	for _, a := range args {
		fqdn := dns.Fqdn(strings.ToLower(a))
		if _, ok := dns.IsDomainName(fqdn); !ok || fqdn == "." {
			return nil, fmt.Errorf("pin: %q is not a domain name", a)
		}
		b := make([]byte, 256)
		n, err := dns.PackDomainName(fqdn, b, 0, nil, false)
		if err != nil {
			return nil, fmt.Errorf("pin: %q: %v", a, err)
		}
		out = append(out, b[:n])
	}
	return out, nil
}

// startPins registers the block's pins and starts their refresh loop: one
// refresh at once (so a name pinned for the first time is cached; a
// restored one is served meanwhile), then every interval.
func (p *pinner) start() {
	p.h.store.setPins(p.h, p.names)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(p.interval)
		defer t.Stop()
		for {
			p.refresh(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// stop stops the refresh loop. The pins stay registered until the next
// instance starts (resetPins).
func (p *pinner) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
	p.cancel = nil
}

// refreshPins asks the upstreams for every pinned name and type. An answer
// replaces the entry (put keeps it pinned); a failure leaves the entry as it
// is, to be served stale.
func (p *pinner) refresh(ctx context.Context) {
	h := p.h
	c := h.counters(h.label)
	for _, name := range p.names {
		for _, t := range pinTypes {
			if ctx.Err() != nil {
				return
			}
			rctx, cancel := context.WithTimeout(ctx, pinTimeout)
			res := h.refreshKey(rctx, name, t, dns.ClassINET, 0, UDP)
			cancel()
			if res.failed() || res.entry == nil {
				if ctx.Err() == nil {
					c.refreshFailure.Inc()
				}
				continue
			}
			pinRefreshes.WithLabelValues(h.label).Inc()
		}
	}
}
