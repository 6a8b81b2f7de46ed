// Package topk finds the heavy hitters of a stream in bounded memory: the
// Space-Saving algorithm (Metwally, Agrawal, El Abbadi, "Efficient
// Computation of Frequent and Top-k Elements in Data Streams", 2005) over a
// window that rotates, so that what it reports is the last minute, not the
// life of the process.
//
// A Sketch keeps at most k counters. A key that has a counter is counted
// exactly from then on; a new key when all k are taken replaces the key with
// the smallest count and inherits that count as its possible error. Every key
// whose true count exceeds N/k (N the stream's length) is guaranteed to be
// held, and each reported count overestimates the truth by at most its Err,
// which is at most N/k.
//
// No library was used: none of the Go modules available to this project
// implements Space-Saving, and the algorithm is a map and a min-heap.
package topk

import (
	"cmp"
	"slices"
	"time"
)

// Counter is one key's estimated count. The true count lies in
// [Count-Err, Count].
type Counter[K comparable] struct {
	Key   K
	Count uint64
	Err   uint64
}

// Sketch is a Space-Saving summary of at most k keys. It is not safe for
// concurrent use.
//
// The counters live in a slice that never moves a key (slots) and a min-heap
// of slot numbers, so that an update costs one map lookup and the heap
// moves write only slice elements.
type Sketch[K comparable] struct {
	k     int
	index map[K]int32 // key -> slot
	slots []slot[K]
	heap  []int32 // slot numbers, min-heap on count
	n     uint64  // stream length
}

type slot[K comparable] struct {
	c   Counter[K]
	pos int32 // position in heap
}

// NewSketch returns a sketch holding at most k keys (k >= 1).
func NewSketch[K comparable](k int) *Sketch[K] {
	k = max(k, 1)
	return &Sketch[K]{k: k, index: make(map[K]int32, k), slots: make([]slot[K], 0, k), heap: make([]int32, 0, k)}
}

// Add counts w occurrences of key. It reports whether key was not held
// before (a caller keeping data beside the keys needs it only then).
func (s *Sketch[K]) Add(key K, w uint64) (added bool) {
	s.n += w
	if i, ok := s.index[key]; ok {
		s.slots[i].c.Count += w
		s.down(s.slots[i].pos)
		return false
	}
	if len(s.slots) < s.k {
		i := int32(len(s.slots))
		s.slots = append(s.slots, slot[K]{c: Counter[K]{Key: key, Count: w}, pos: i})
		s.heap = append(s.heap, i)
		s.index[key] = i
		s.up(i)
		return true
	}
	// Replace the minimum: the newcomer may have occurred up to min times
	// unseen.
	i := s.heap[0]
	m := &s.slots[i]
	delete(s.index, m.c.Key)
	m.c = Counter[K]{Key: key, Count: m.c.Count + w, Err: m.c.Count}
	s.index[key] = i
	s.down(0)
	return true
}

// N is the number of occurrences added.
func (s *Sketch[K]) N() uint64 { return s.n }

// Len is the number of keys held (at most k).
func (s *Sketch[K]) Len() int { return len(s.slots) }

// Min is the smallest count held once the sketch is full, else 0: a key not
// held occurred at most Min times.
func (s *Sketch[K]) Min() uint64 {
	if len(s.slots) < s.k {
		return 0
	}
	return s.slots[s.heap[0]].c.Count
}

// lookup returns key's counter, if held.
func (s *Sketch[K]) lookup(key K) (Counter[K], bool) {
	if i, ok := s.index[key]; ok {
		return s.slots[i].c, true
	}
	return Counter[K]{}, false
}

// Reset forgets everything, keeping the allocated room.
func (s *Sketch[K]) Reset() {
	clear(s.index)
	s.slots = s.slots[:0]
	s.heap = s.heap[:0]
	s.n = 0
}

// Top returns up to n counters, largest count first.
func (s *Sketch[K]) Top(n int) []Counter[K] {
	out := make([]Counter[K], len(s.slots))
	for i := range s.slots {
		out[i] = s.slots[i].c
	}
	sortDesc(out)
	return out[:min(n, len(out))]
}

func sortDesc[K comparable](cs []Counter[K]) {
	slices.SortStableFunc(cs, func(a, b Counter[K]) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.Err, b.Err)
	})
}

func (s *Sketch[K]) count(pos int32) uint64 { return s.slots[s.heap[pos]].c.Count }

func (s *Sketch[K]) up(i int32) {
	for i > 0 {
		p := (i - 1) / 2
		if s.count(p) <= s.count(i) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *Sketch[K]) down(i int32) {
	n := int32(len(s.heap))
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && s.count(r) < s.count(l) {
			m = r
		}
		if s.count(i) <= s.count(m) {
			return
		}
		s.swap(i, m)
		i = m
	}
}

func (s *Sketch[K]) swap(i, j int32) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	s.slots[s.heap[i]].pos = i
	s.slots[s.heap[j]].pos = j
}

// Window is a Space-Saving summary of the stream over the last span: span is
// cut into slots, each with its own sketch; Add counts into the current
// slot, and the oldest slot is emptied and reused when time moves past it.
// Top merges the slots, so it covers between span-span/slots and span of
// the stream. It is not safe for concurrent use.
type Window[K comparable] struct {
	slot  time.Duration
	slots []*Sketch[K]
	epoch []int64 // slot number each sketch holds (time / slot)
	cur   int     // index of the current slot
}

// NewWindow returns a window over span, cut into slots slots of k keys each.
// Memory is bounded by slots*k keys whatever the stream.
func NewWindow[K comparable](span time.Duration, slots, k int) *Window[K] {
	slots = max(slots, 1)
	w := &Window[K]{slot: span / time.Duration(slots), slots: make([]*Sketch[K], slots), epoch: make([]int64, slots)}
	for i := range w.slots {
		w.slots[i] = NewSketch[K](k)
		w.epoch[i] = -1
	}
	return w
}

// Add counts w occurrences of key at time now and reports whether the
// current slot did not hold key before.
func (w *Window[K]) Add(now time.Time, key K, n uint64) (added bool) {
	return w.current(now).Add(key, n)
}

// current returns the sketch of now's slot, rotating when now has moved
// into a new slot.
func (w *Window[K]) current(now time.Time) *Sketch[K] {
	e := now.UnixNano() / int64(w.slot)
	if w.epoch[w.cur] == e {
		return w.slots[w.cur]
	}
	if e < w.epoch[w.cur] { // the clock stepped back: keep counting here
		return w.slots[w.cur]
	}
	w.cur = int(e % int64(len(w.slots)))
	if w.epoch[w.cur] != e {
		w.slots[w.cur].Reset()
		w.epoch[w.cur] = e
	}
	return w.slots[w.cur]
}

// live reports whether slot i holds part of the span ending at now.
func (w *Window[K]) live(i int, now time.Time) bool {
	e := now.UnixNano() / int64(w.slot)
	return w.epoch[i] >= 0 && e-w.epoch[i] < int64(len(w.slots)) && w.epoch[i] <= e
}

// Top returns up to n counters over the window ending at now, largest count
// first. A key's count is its sum over the slots; where a slot does not hold
// the key, that slot's Min is added to both its Count and its Err (the key
// may have occurred up to Min times there unseen), so the true count still
// lies in [Count-Err, Count].
func (w *Window[K]) Top(now time.Time, n int) []Counter[K] {
	merged := map[K]*Counter[K]{}
	var live []*Sketch[K]
	for i, s := range w.slots {
		if !w.live(i, now) {
			continue
		}
		live = append(live, s)
		for _, sl := range s.slots {
			c := sl.c
			m := merged[c.Key]
			if m == nil {
				m = &Counter[K]{Key: c.Key}
				merged[c.Key] = m
			}
			m.Count += c.Count
			m.Err += c.Err
		}
	}
	out := make([]Counter[K], 0, len(merged))
	for _, m := range merged {
		for _, s := range live {
			if _, ok := s.index[m.Key]; !ok {
				m.Count += s.Min()
				m.Err += s.Min()
			}
		}
		out = append(out, *m)
	}
	sortDesc(out)
	return out[:min(n, len(out))]
}

// N is the number of occurrences added over the window ending at now.
func (w *Window[K]) N(now time.Time) uint64 {
	var n uint64
	for i, s := range w.slots {
		if w.live(i, now) {
			n += s.n
		}
	}
	return n
}

// Len is the number of keys held over all slots (at most slots*k).
func (w *Window[K]) Len() int {
	n := 0
	for _, s := range w.slots {
		n += s.Len()
	}
	return n
}

// Keys calls f for every key held in any slot (a key held in several slots
// more than once).
func (w *Window[K]) Keys(f func(K)) {
	for _, s := range w.slots {
		for _, sl := range s.slots {
			f(sl.c.Key)
		}
	}
}

// Count is key's counter over the window ending at now, bracketed as in Top;
// a key no slot holds gets Count and Err equal to the sum of the slots' Min.
func (w *Window[K]) Count(now time.Time, key K) Counter[K] {
	c := Counter[K]{Key: key}
	for i, s := range w.slots {
		if !w.live(i, now) {
			continue
		}
		if h, ok := s.lookup(key); ok {
			c.Count += h.Count
			c.Err += h.Err
		} else {
			c.Count += s.Min()
			c.Err += s.Min()
		}
	}
	return c
}
