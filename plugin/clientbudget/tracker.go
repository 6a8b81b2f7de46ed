package clientbudget

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/localdns/localdns/internal/topk"
)

const (
	// window is what Top reports on: the last minute, in six slots of ten
	// seconds (so it covers 50 to 60 s).
	window      = time.Minute
	windowSlots = 6
	// topClients and topNames are the keys each slot's sketch holds: a key
	// with more than 1/topClients of a slot's queries is always found, and
	// each count is off by at most that share.
	topClients = 256
	topNames   = 512
	// maxBuckets bounds the token buckets: far above the pods one node
	// runs (Kubernetes' default is 110 per node), so a bucket is only
	// evicted when an address has been idle longest among thousands.
	maxBuckets = 8192
)

// Tracker is the process-wide account of who asks what: each client's token
// bucket for upstream queries and the heavy-hitter sketches behind Top. All
// of it is bounded: at most maxBuckets buckets (least recently used out),
// and windowSlots*(4*topClients + 2*topNames) sketch counters plus the names
// of those counters.
type Tracker struct {
	mu      sync.Mutex
	now     func() time.Time
	rate    float64 // tokens per second; 0: no limit
	burst   float64
	buckets lru

	queries, misses, nxdomain, limited *topk.Window[netip.Addr]
	asked, missed                      *topk.Window[uint64]
	names                              map[uint64]string // name of each hash held in asked or missed
	seed                               maphash.Seed

	refreshes uint64 // upstream queries the cache made on its own, since start
}

// NewTracker returns a tracker with no limit.
func NewTracker() *Tracker {
	w := func() *topk.Window[netip.Addr] { return topk.NewWindow[netip.Addr](window, windowSlots, topClients) }
	n := func() *topk.Window[uint64] { return topk.NewWindow[uint64](window, windowSlots, topNames) }
	return &Tracker{
		now:     time.Now,
		buckets: newLRU(maxBuckets),
		queries: w(), misses: w(), nxdomain: w(), limited: w(),
		asked: n(), missed: n(),
		names: map[uint64]string{},
		seed:  maphash.MakeSeed(),
	}
}

// SetBudget sets each client's budget: rate upstream queries a second on
// average, burst at once. rate 0 turns limiting off. Existing buckets keep
// their tokens, capped at the new burst.
func (t *Tracker) SetBudget(rate float64, burst int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rate, t.burst = rate, float64(burst)
	if rate == 0 {
		t.buckets.clear()
	}
}

// ObserveHit accounts a query answered from the cache at the socket
// (internal/fastpath): hits are never limited.
func (t *Tracker) ObserveHit(client netip.Addr, name []byte, rcode int) {
	h := maphash.Bytes(t.seed, name)
	t.mu.Lock()
	now := t.now()
	t.queries.Add(now, client, 1)
	t.addName(t.asked, now, h, name)
	if rcode == nxdomain {
		t.nxdomain.Add(now, client, 1)
	}
	t.mu.Unlock()
}

// admit accounts a query from client that missed the cache and reports
// whether its budget allows sending it upstream.
func (t *Tracker) admit(client netip.Addr, name []byte) bool {
	h := maphash.Bytes(t.seed, name)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.queries.Add(now, client, 1)
	t.misses.Add(now, client, 1)
	t.addName(t.asked, now, h, name)
	t.addName(t.missed, now, h, name)
	if t.rate == 0 {
		return true
	}
	b := t.buckets.get(client)
	if b == nil {
		b = t.buckets.add(client, bucket{tokens: t.burst, last: now.UnixNano()})
	}
	if b.take(now.UnixNano(), t.rate, t.burst) {
		return true
	}
	t.limited.Add(now, client, 1)
	return false
}

// observeNXDOMAIN accounts an NXDOMAIN answer from upstream to client.
func (t *Tracker) observeNXDOMAIN(client netip.Addr) {
	t.mu.Lock()
	t.nxdomain.Add(t.now(), client, 1)
	t.mu.Unlock()
}

// observeRefresh accounts an upstream query the cache made on its own.
func (t *Tracker) observeRefresh() {
	t.mu.Lock()
	t.refreshes++
	t.mu.Unlock()
}

// addName counts a name under its hash, remembering the text when the
// sketch takes the hash in: the sketches hold 8-byte hashes, so a hit on a
// name already held allocates nothing and does not look the text up.
func (t *Tracker) addName(w *topk.Window[uint64], now time.Time, h uint64, name []byte) {
	if !w.Add(now, h, 1) {
		return // held already, so its text is known
	}
	if _, ok := t.names[h]; !ok {
		t.names[h] = string(name)
		if len(t.names) > 2*windowSlots*2*topNames {
			t.pruneNames()
		}
	}
}

// pruneNames forgets the text of hashes no sketch holds any more.
func (t *Tracker) pruneNames() {
	held := make(map[uint64]bool, len(t.names))
	for _, w := range []*topk.Window[uint64]{t.asked, t.missed} {
		w.Keys(func(h uint64) { held[h] = true })
	}
	for h := range t.names {
		if !held[h] {
			delete(t.names, h)
		}
	}
}

// bucket is one client's token bucket, refilled lazily.
type bucket struct {
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

func (b *bucket) take(now int64, rate, burst float64) bool {
	if now > b.last {
		b.tokens = min(burst, b.tokens+float64(now-b.last)*rate/1e9)
		b.last = now
	}
	b.tokens = min(b.tokens, burst)
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
