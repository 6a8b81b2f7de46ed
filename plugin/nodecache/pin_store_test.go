package nodecache

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// pinWire is name in lower-case wire form.
func pinWire(t *testing.T, names ...string) [][]byte {
	t.Helper()
	out, err := parsePins(names)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPinnedSurviveFlood: pinned names are never evicted, even by a flood
// of one-off names that evicts everything else (the hot names of
// TestFloodKeepsBudgetAndHotNames are protected by their hits; these are
// never asked for), and they count against the budget.
func TestPinnedSurviveFlood(t *testing.T) {
	const budget = 2 << 20
	s := NewStore(budget)
	h := &Nodecache{store: s, ns: 1}
	pinned := make([]string, 64)
	for i := range pinned {
		pinned[i] = fmt.Sprintf("critical%d.example.org.", i)
	}
	s.setPins(h, pinWire(t, pinned...))
	now := time.Now()
	for _, name := range pinned {
		s.put(testEntry(t, 1, name, 3600, now))
	}
	other := make([]string, 64)
	for i := range other {
		other[i] = fmt.Sprintf("other%d.example.org.", i)
		s.put(testEntry(t, 1, other[i], 3600, now))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 100_000 {
		s.put(testEntry(t, 1, fmt.Sprintf("r%016x.flood.example.org.", rng.Uint64()), 3600, now))
		if s.Bytes() > budget {
			t.Fatalf("after %d inserts: %d bytes > budget %d", i, s.Bytes(), budget)
		}
	}
	for _, name := range pinned {
		e := lookup(s, 1, name)
		if e == nil {
			t.Fatalf("pinned %s was evicted by the flood", name)
		}
		if !e.pinned.Load() {
			t.Fatalf("pinned %s lost its mark", name)
		}
	}
	for _, name := range other {
		if lookup(s, 1, name) != nil {
			t.Fatalf("unpinned %s survived a flood that should evict it", name)
		}
	}
	// Unpinning gives them back to eviction.
	s.resetPins()
	if e := lookup(s, 1, pinned[0]); e == nil || e.pinned.Load() {
		t.Fatalf("after unpinning: %v", e)
	}
	s.Resize(1 << 10)
	if lookup(s, 1, pinned[0]) != nil {
		t.Fatal("an unpinned name survived a resize to nothing")
	}
}

// TestShardOfPinnedOnlyStaysBounded: a shard holding only pinned entries
// over its budget stops evicting (no endless loop) and evicts new unpinned
// entries first.
func TestShardOfPinnedOnlyStaysBounded(t *testing.T) {
	s := NewStore(1 << 20)
	h := &Nodecache{store: s, ns: 1}
	var names []string
	for i := range 400 {
		names = append(names, fmt.Sprintf("p%d.example.org.", i))
	}
	s.setPins(h, pinWire(t, names...))
	now := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, name := range names {
			s.put(testEntry(t, 1, name, 3600, now))
		}
		s.Resize(1 << 10) // far below what the pinned entries take
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("eviction did not finish with only pinned entries over the budget")
	}
	for _, name := range names {
		if lookup(s, 1, name) == nil {
			t.Fatalf("pinned %s evicted by a resize", name)
		}
	}
	if s.Len() != len(names) {
		t.Fatalf("%d entries, want the %d pinned", s.Len(), len(names))
	}
}

// TestPinnedHasNoStaleWindow: an expired pinned entry stays servable long
// after its TTL and stale window; an unpinned one does not.
func TestPinnedHasNoStaleWindow(t *testing.T) {
	s := NewStore(1 << 20)
	h := &Nodecache{store: s, ns: 1}
	s.setPins(h, pinWire(t, "pinned.example.org"))
	now := time.Now()
	p, o := testEntry(t, 1, "pinned.example.org.", 1, now), testEntry(t, 1, "other.example.org.", 1, now)
	s.put(p)
	s.put(o)
	later := now.Add(30 * 24 * time.Hour).UnixNano()
	if fresh, stale := p.servable(later); fresh || !stale {
		t.Fatalf("pinned entry a month later: fresh %v stale %v", fresh, stale)
	}
	if fresh, stale := o.servable(later); fresh || stale {
		t.Fatalf("unpinned entry a month later: fresh %v stale %v", fresh, stale)
	}
	if p.snapshotStale() != maxTTLLimit || o.snapshotStale() != o.stale {
		t.Fatalf("snapshot stale windows: pinned %d, other %d", p.snapshotStale(), o.snapshotStale())
	}
	// AAAA of the same name is pinned too; DO is not.
	var q query
	q.qtype, q.qclass = dns.TypeAAAA, dns.ClassINET
	q.nameLen = copy(q.name[:], pinWire(t, "pinned.example.org")[0])
	m := new(dns.Msg).SetQuestion("pinned.example.org.", dns.TypeAAAA)
	m.Response = true
	m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.example.org.", Mbox: "h.example.org.", Minttl: 60}}
	pol := defaultConfig().policy
	aaaa, why := newEntry(m, 1, &q, &pol, now)
	if aaaa == nil {
		t.Fatal(why)
	}
	s.put(aaaa)
	if !aaaa.pinned.Load() {
		t.Fatal("AAAA of a pinned name not pinned")
	}
	q.do = true
	do, _ := newEntry(m, 1, &q, &pol, now)
	s.put(do)
	if do.pinned.Load() {
		t.Fatal("DO form of a pinned name pinned")
	}
}
