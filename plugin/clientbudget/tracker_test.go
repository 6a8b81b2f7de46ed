package clientbudget

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// fakeClock is a tracker clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestTracker(rate float64, burst int) (*Tracker, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	t := NewTracker()
	t.now = clk.now
	t.SetBudget(rate, burst)
	return t, clk
}

var (
	podA = netip.MustParseAddr("10.244.0.5")
	podB = netip.MustParseAddr("10.244.0.6")
)

func TestBudgetBurstThenRatePerClient(t *testing.T) {
	tr, clk := newTestTracker(10, 5)
	admitted := 0
	for range 20 {
		if tr.admit(podA, []byte("a.example.")) {
			admitted++
		}
	}
	if admitted != 5 {
		t.Fatalf("burst: %d admitted at once, want 5", admitted)
	}
	// Another client has its own bucket.
	if !tr.admit(podB, []byte("b.example.")) {
		t.Fatal("a second client was limited by the first one's flood")
	}
	// One second refills rate tokens, never more than burst.
	clk.t = clk.t.Add(time.Second)
	admitted = 0
	for range 20 {
		if tr.admit(podA, []byte("a.example.")) {
			admitted++
		}
	}
	if admitted != 5 {
		t.Fatalf("after 1 s at 10/s with burst 5: %d admitted, want 5 (capped at burst)", admitted)
	}
	clk.t = clk.t.Add(300 * time.Millisecond)
	admitted = 0
	for range 20 {
		if tr.admit(podA, []byte("a.example.")) {
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("after 0.3 s at 10/s: %d admitted, want 3", admitted)
	}
	top := tr.Top(10)
	if len(top.Clients) != 2 || top.Clients[0].Client != podA.String() || top.Clients[0].Limited != 60-13 || top.Clients[0].Misses != 60 {
		t.Fatalf("top clients: %+v", top.Clients)
	}
	if top.Clients[1].Limited != 0 {
		t.Fatalf("client B limited: %+v", top.Clients[1])
	}
}

func TestBudgetOffAdmitsEverything(t *testing.T) {
	tr, _ := newTestTracker(0, 0)
	for i := range 10_000 {
		if !tr.admit(podA, []byte("x.")) {
			t.Fatalf("query %d limited with the budget off", i)
		}
	}
	if tr.buckets.len() != 0 {
		t.Fatalf("%d buckets kept with the budget off", tr.buckets.len())
	}
}

func TestBucketsBoundedByLRU(t *testing.T) {
	tr, _ := newTestTracker(1, 1)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	for i := range maxBuckets + 5000 {
		tr.admit(addr(i), []byte("n."))
	}
	if n := tr.buckets.len(); n != maxBuckets || len(tr.buckets.index) != maxBuckets {
		t.Fatalf("%d buckets (index %d), bound %d", n, len(tr.buckets.index), maxBuckets)
	}
	// The most recent client kept its (empty) bucket; the oldest was
	// evicted and starts again from a full one.
	if tr.admit(addr(maxBuckets+4999), []byte("n.")) {
		t.Fatal("the most recent client's bucket was lost")
	}
	if !tr.admit(addr(0), []byte("n.")) {
		t.Fatal("an evicted client did not start from a full bucket")
	}
}

func TestLRUOrder(t *testing.T) {
	l := newLRU(3)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}) }
	for i := 1; i <= 3; i++ {
		l.add(addr(i), bucket{tokens: float64(i)})
	}
	l.get(addr(1)) // 1 is now the most recent: 2 is the oldest
	l.add(addr(4), bucket{})
	if l.get(addr(2)) != nil {
		t.Fatal("the least recently used key survived")
	}
	for _, i := range []int{1, 3, 4} {
		if l.get(addr(i)) == nil {
			t.Fatalf("key %d evicted", i)
		}
	}
}

func TestTopNamesAndHitsBounded(t *testing.T) {
	tr, clk := newTestTracker(0, 0)
	// A storm of unique names from one client beside a steady hot name.
	for i := range 100_000 {
		tr.ObserveHit(podB, []byte("hot.example."), 0)
		tr.ObserveHit(podA, fmt.Appendf(nil, "n%d.example.", i), nxdomain)
		if i%10_000 == 0 {
			clk.t = clk.t.Add(time.Second)
		}
	}
	top := tr.Top(5)
	if top.Asked[0].Name != "hot.example." || top.Asked[0].Count < 100_000 {
		t.Fatalf("most asked: %+v", top.Asked[0])
	}
	if top.Clients[0].Client != podA.String() && top.Clients[0].Client != podB.String() {
		t.Fatalf("top client %q", top.Clients[0].Client)
	}
	var a ClientStat
	for _, c := range top.Clients {
		if c.Client == podA.String() {
			a = c
		}
	}
	if a.NXDOMAIN != 100_000 || a.Queries != 100_000 {
		t.Fatalf("storming client: %+v", a)
	}
	if len(tr.names) > 2*windowSlots*2*topNames {
		t.Fatalf("%d name texts kept, bound %d", len(tr.names), 2*windowSlots*2*topNames)
	}
	if n := tr.asked.Len(); n > windowSlots*topNames {
		t.Fatalf("asked sketch holds %d keys", n)
	}
	// A minute later it is all gone.
	clk.t = clk.t.Add(2 * time.Minute)
	if top := tr.Top(5); len(top.Clients) != 0 || len(top.Asked) != 0 || top.Queries != 0 {
		t.Fatalf("a minute later: %+v", top)
	}
}

// BenchmarkObserveHit is the accounting a fast-path cache hit pays: one
// lock, the clock, two sketch updates and a name hash.
func BenchmarkObserveHit(b *testing.B) {
	tr := NewTracker()
	names := make([][]byte, 1000)
	for i := range names {
		names[i] = fmt.Appendf(nil, "name-%d.default.svc.cluster.local.", i)
	}
	clients := make([]netip.Addr, 100)
	for i := range clients {
		clients[i] = netip.AddrFrom4([4]byte{10, 244, 0, byte(i)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		tr.ObserveHit(clients[i%100], names[i%1000], 0)
	}
}

// BenchmarkObserveHitSkewed is the common case: a node's hits are skewed
// (Zipf over 2000 names from 50 pods), and the busy names stay held.
func BenchmarkObserveHitSkewed(b *testing.B) {
	tr := NewTracker()
	r := rand.New(rand.NewPCG(1, 1))
	z := rand.NewZipf(r, 1.1, 1, 1999)
	names := make([][]byte, 4096)
	for i := range names {
		names[i] = fmt.Appendf(nil, "name-%d.default.svc.cluster.local.", z.Uint64())
	}
	clients := make([]netip.Addr, 50)
	for i := range clients {
		clients[i] = netip.AddrFrom4([4]byte{10, 244, 0, byte(i)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		tr.ObserveHit(clients[i%50], names[i&4095], 0)
	}
}
