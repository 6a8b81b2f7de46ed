package nodecache

import (
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
)

// testEntry builds the entry an upstream answer for name would produce.
func testEntry(t testing.TB, ns Namespace, name string, ttl uint32, now time.Time) *entry {
	t.Helper()
	var q query
	q.qtype, q.qclass = dns.TypeA, dns.ClassINET
	n, err := dns.PackDomainName(name, q.name[:], 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	q.nameLen = n
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	m.Response, m.RecursionAvailable = true, true
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(192, 0, 2, 1)}}
	pol := defaultConfig().policy
	e, why := newEntry(m, ns, &q, &pol, now)
	if e == nil {
		t.Fatalf("not cacheable: %s", why)
	}
	return e
}

func lookup(s *Store, ns Namespace, name string) *entry {
	var nb [maxNameWire]byte
	n, _ := dns.PackDomainName(name, nb[:], 0, nil, false)
	key := s.keys.keyOf(ns, 0, dns.TypeA, dns.ClassINET, nb[:n])
	return s.get(key, ns, 0, dns.TypeA, dns.ClassINET, nb[:n])
}

// TestFloodKeepsBudgetAndHotNames floods the store with unique random names
// (as a client walking random subdomains does) while a hot set is queried
// all along: memory must stay within the budget and the hot names cached.
func TestFloodKeepsBudgetAndHotNames(t *testing.T) {
	const budget = 2 << 20
	s := NewStore(budget)
	now := time.Now()
	hot := make([]string, 500)
	for i := range hot {
		hot[i] = fmt.Sprintf("hot%d.example.org.", i)
		s.put(testEntry(t, 1, hot[i], 3600, now))
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	rng := rand.New(rand.NewPCG(1, 2))
	const flood = 100_000
	for i := range flood {
		name := fmt.Sprintf("r%016x.flood.example.org.", rng.Uint64())
		if lookup(s, 1, name) != nil {
			t.Fatal("random name found before insertion")
		}
		s.put(testEntry(t, 1, name, 3600, now))
		if i%50 == 0 { // the hot set keeps being asked for
			for j := range 10 {
				lookup(s, 1, hot[(i/50*10+j)%len(hot)])
			}
		}
		if s.Bytes() > budget {
			t.Fatalf("after %d inserts: %d bytes > budget %d", i, s.Bytes(), budget)
		}
	}
	missing := 0
	for _, name := range hot {
		if lookup(s, 1, name) == nil {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d hot names were evicted by the flood", missing, len(hot))
	}
	if s.Evictions() < flood/2 {
		t.Fatalf("only %d evictions for %d inserts", s.Evictions(), flood)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grow := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if grow > 2*budget {
		t.Fatalf("heap grew by %d bytes for a %d byte budget", grow, budget)
	}
	t.Logf("%d entries, %d accounted bytes of %d, %d evictions, heap grew %d bytes", s.Len(), s.Bytes(), budget, s.Evictions(), grow)
}

func TestResizeEvicts(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	for i := range 20000 {
		s.put(testEntry(t, 1, fmt.Sprintf("n%d.example.org.", i), 60, now))
	}
	s.Resize(2 << 20)
	if s.Bytes() > 2<<20 {
		t.Fatalf("%d bytes after shrinking to 2 MiB", s.Bytes())
	}
}

func TestReplaceKeepsAccounting(t *testing.T) {
	s := NewStore(4 << 20)
	now := time.Now()
	for range 100 {
		s.put(testEntry(t, 1, "same.example.org.", 60, now))
	}
	if s.Len() != 1 {
		t.Fatalf("%d entries after replacing one key 100 times", s.Len())
	}
	e := lookup(s, 1, "same.example.org.")
	if want := e.size; s.bytes.Load() != want {
		t.Fatalf("accounted %d bytes, want %d", s.bytes.Load(), want)
	}
	s.remove(e)
	if s.Len() != 0 || s.bytes.Load() != 0 {
		t.Fatalf("after remove: %d entries, %d bytes", s.Len(), s.bytes.Load())
	}
}

// TestEntryOverheadCoversStruct keeps the per-entry accounting honest when
// the entry struct grows: the overhead must cover the struct and a map slot.
func TestEntryOverheadCoversStruct(t *testing.T) {
	if need := unsafe.Sizeof(entry{}) + 24; uintptr(entryOverhead) < need {
		t.Fatalf("entryOverhead %d < %d (struct + map slot)", entryOverhead, need)
	}
}
