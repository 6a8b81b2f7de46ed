package topk

import (
	"math/rand/v2"
	"testing"
	"time"
)

// zipfStream returns n keys drawn from a Zipf distribution over universe
// keys (s=1.2): a few keys make most of the stream, as a few pods make most
// of a node's DNS.
func zipfStream(n int, universe uint64, seed uint64) []uint64 {
	r := rand.New(rand.NewPCG(seed, seed))
	z := rand.NewZipf(r, 1.2, 1, universe-1)
	out := make([]uint64, n)
	for i := range out {
		out[i] = z.Uint64()
	}
	return out
}

func exactCounts(stream []uint64) map[uint64]uint64 {
	m := map[uint64]uint64{}
	for _, k := range stream {
		m[k]++
	}
	return m
}

func TestSketchAccuracyOnSkewedStream(t *testing.T) {
	const n, k = 200_000, 100
	stream := zipfStream(n, 100_000, 1)
	exact := exactCounts(stream)
	s := NewSketch[uint64](k)
	for _, key := range stream {
		s.Add(key, 1)
	}
	if s.Len() > k {
		t.Fatalf("sketch holds %d keys, bound is %d", s.Len(), k)
	}
	if s.N() != n {
		t.Fatalf("N = %d, want %d", s.N(), n)
	}
	// Space-Saving's guarantees: every reported count brackets the truth
	// within Err <= N/k, and every key above N/k is held.
	held := map[uint64]bool{}
	for _, c := range s.Top(k) {
		held[c.Key] = true
		truth := exact[c.Key]
		if c.Count < truth || c.Count-c.Err > truth {
			t.Errorf("key %d: count %d err %d does not bracket the true %d", c.Key, c.Count, c.Err, truth)
		}
		if c.Err > n/k {
			t.Errorf("key %d: err %d above N/k = %d", c.Key, c.Err, n/k)
		}
	}
	for key, cnt := range exact {
		if cnt > n/k && !held[key] {
			t.Errorf("key %d occurred %d times (> N/k = %d) but is not held", key, cnt, n/k)
		}
	}
	// On a skewed stream the top ten come out in the right order.
	top := s.Top(10)
	for i := 1; i < len(top); i++ {
		if exact[top[i-1].Key] < exact[top[i].Key] {
			t.Errorf("rank %d: key %d (true %d) above key %d (true %d)", i, top[i-1].Key, exact[top[i-1].Key], top[i].Key, exact[top[i].Key])
		}
	}
}

func TestSketchBoundedUnderUniqueKeys(t *testing.T) {
	s := NewSketch[uint64](50)
	for i := range uint64(100_000) {
		s.Add(i, 1)
	}
	if s.Len() != 50 || len(s.index) != 50 {
		t.Fatalf("held %d keys (index %d), want 50", s.Len(), len(s.index))
	}
	// A heavy key arriving after a flood of one-offs is still found.
	for range 5000 {
		s.Add(1<<40, 1)
	}
	if top := s.Top(1); top[0].Key != 1<<40 {
		t.Fatalf("top key %d, want the heavy one", top[0].Key)
	}
}

func TestSketchHeapInvariant(t *testing.T) {
	s := NewSketch[uint64](32)
	for _, key := range zipfStream(20_000, 1000, 7) {
		s.Add(key, 1+key%3)
		for i := int32(1); i < int32(len(s.heap)); i++ {
			if s.count((i-1)/2) > s.count(i) {
				t.Fatalf("heap order broken at %d", i)
			}
		}
		for i, h := range s.heap {
			if s.slots[h].pos != int32(i) || s.index[s.slots[h].c.Key] != h {
				t.Fatalf("heap position %d: slot %d says %d, index %d", i, h, s.slots[h].pos, s.index[s.slots[h].c.Key])
			}
		}
	}
}

func TestWindowForgetsOldSlots(t *testing.T) {
	w := NewWindow[string](time.Minute, 6, 10)
	t0 := time.Unix(1_000_000, 0)
	for range 100 {
		w.Add(t0, "old", 1)
	}
	for range 30 {
		w.Add(t0.Add(30*time.Second), "new", 1)
	}
	top := w.Top(t0.Add(30*time.Second), 10)
	if len(top) != 2 || top[0].Key != "old" || top[0].Count != 100 || top[1].Count != 30 {
		t.Fatalf("within the minute: %+v", top)
	}
	if n := w.N(t0.Add(30 * time.Second)); n != 130 {
		t.Fatalf("N = %d, want 130", n)
	}
	// 65 s later the first slot is out of the window even before a new Add
	// rotates it away.
	later := t0.Add(65 * time.Second)
	top = w.Top(later, 10)
	if len(top) != 1 || top[0].Key != "new" || top[0].Count != 30 {
		t.Fatalf("after a minute: %+v", top)
	}
	// Adding reuses the expired slot rather than growing.
	for i := range 1000 {
		w.Add(t0.Add(time.Duration(i)*time.Second), string(rune('a'+i%26)), 1)
	}
	if w.Len() > 6*10 {
		t.Fatalf("window holds %d keys, bound %d", w.Len(), 60)
	}
}

func TestWindowMergeBracketsTruth(t *testing.T) {
	w := NewWindow[uint64](time.Minute, 6, 20)
	t0 := time.Unix(2_000_000, 0)
	exact := map[uint64]uint64{}
	for i, key := range zipfStream(60_000, 5000, 3) {
		now := t0.Add(time.Duration(i) * time.Millisecond) // 60 s
		w.Add(now, key, 1)
		exact[key]++
	}
	end := t0.Add(59_999 * time.Millisecond)
	for _, c := range w.Top(end, 20) {
		if truth := exact[c.Key]; c.Count < truth || c.Count-c.Err > truth {
			t.Errorf("key %d: count %d err %d does not bracket the true %d", c.Key, c.Count, c.Err, truth)
		}
	}
}

func BenchmarkSketchAddHeld(b *testing.B) {
	s := NewSketch[uint64](256)
	keys := zipfStream(4096, 200, 5)
	b.ResetTimer()
	for i := range b.N {
		s.Add(keys[i&4095], 1)
	}
}

func BenchmarkSketchAddUnique(b *testing.B) {
	s := NewSketch[uint64](256)
	for i := range b.N {
		s.Add(uint64(i), 1)
	}
}
