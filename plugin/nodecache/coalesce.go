package nodecache

import (
	"sync"

	"github.com/miekg/dns"
)

// result is the outcome of one upstream exchange.
type result struct {
	msg   *dns.Msg // the answer as written by the next plugin, nil if none
	entry *entry   // the entry stored from msg, nil if not cacheable
	rcode int      // what the next plugin returned
	err   error
}

// failed reports whether the exchange gave no usable answer: RFC 8767 serves
// stale data instead of these.
func (r *result) failed() bool {
	if r.msg == nil {
		return true
	}
	switch r.msg.Rcode {
	case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeFormatError, dns.RcodeNotImplemented:
		return true
	}
	return false
}

// flightKey is the full cache key of an upstream query: concurrent misses
// share an answer only when all of it is equal. It is not a hash, which a
// client could make collide; Go's maps hash it with a per-map random seed.
type flightKey struct {
	ns            Namespace
	flags         uint8
	qtype, qclass uint16
	name          string // lower-cased wire name
}

func makeFlightKey(ns Namespace, flags uint8, qtype, qclass uint16, name []byte) flightKey {
	var b [maxNameWire]byte
	n := copy(b[:], name)
	for i := range n {
		b[i] = lower(b[i])
	}
	return flightKey{ns: ns, flags: flags, qtype: qtype, qclass: qclass, name: string(b[:n])}
}

// flightKey returns the key under which a refresh of e is coalesced.
func (e *entry) flightKey() flightKey {
	return makeFlightKey(e.ns, e.flags, e.qtype, e.qclass, e.name)
}

// flightGroup coalesces concurrent upstream queries for one key: the first
// caller runs fn, the others wait for its result. plugin/pkg/singleflight
// does the same but does not tell a caller whether it waited, which the
// coalesced-misses metric needs.
type flightGroup struct {
	mu    sync.Mutex
	calls map[flightKey]*flight
}

type flight struct {
	done chan struct{}
	res  result
}

// do runs fn once per key at a time. shared is true for callers that
// waited for another caller's fn.
func (g *flightGroup) do(key flightKey, fn func() result) (res result, shared bool) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[flightKey]*flight)
	}
	if f, ok := g.calls[key]; ok {
		g.mu.Unlock()
		<-f.done
		return f.res, true
	}
	f := &flight{done: make(chan struct{})}
	g.calls[key] = f
	g.mu.Unlock()

	defer func() {
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(f.done)
	}()
	f.res = fn()
	return f.res, false
}
