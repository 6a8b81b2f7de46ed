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

// flightGroup coalesces concurrent upstream queries for one key: the first
// caller runs fn, the others wait for its result. plugin/pkg/singleflight
// does the same but does not tell a caller whether it waited, which the
// coalesced-misses metric needs.
type flightGroup struct {
	mu    sync.Mutex
	calls map[uint64]*flight
}

type flight struct {
	done chan struct{}
	res  result
}

// do runs fn once per key at a time. shared is true for callers that
// waited for another caller's fn.
func (g *flightGroup) do(key uint64, fn func() result) (res result, shared bool) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[uint64]*flight)
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
