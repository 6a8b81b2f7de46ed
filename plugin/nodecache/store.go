package nodecache

import (
	"sync"
	"sync/atomic"
	"time"
)

// numShards splits the store so that concurrent hits and inserts rarely meet
// on one lock; a power of two so a key picks its shard with a mask.
const numShards = 64

const (
	queueNone uint8 = iota
	queueSmall
	queueMain
)

// ghostEntryCost is what one remembered ghost key costs (ring slot + map
// slot); the ghost memory is taken out of each shard's budget.
const ghostEntryCost = 48

// Store is the process-wide cache: a byte-weighted, sharded S3-FIFO
// (Yang et al., SOSP 2023). New keys enter a small FIFO holding about 10% of
// the bytes; keys hit again while there move to the main FIFO, where hits buy
// another round instead of eviction; one-hit wonders leave quickly and are
// remembered in a ghost FIFO, so a key that comes back goes straight to main.
// Under a flood of unique names only the small FIFO churns and hot names stay.
// A hit takes only a shard read lock and bumps an atomic counter.
type Store struct {
	shards [numShards]shard

	budget     atomic.Int64
	ghostBytes atomic.Int64 // memory reserved for the ghost queues
	entries    atomic.Int64
	bytes      atomic.Int64
	evictions  atomic.Uint64

	flight flightGroup
	keys   keyHasher // per-process seed: buckets cannot be steered

	// refreshes bounds the background refreshes and prefetches in flight.
	// When many entries expire together (names cached at the same moment,
	// a restored snapshot) every hit would start one: thousands of upstream
	// queries and goroutines at once, while stale answers serve clients
	// anyway. Past the bound an entry simply stays stale until a later hit.
	refreshes chan struct{}

	// handlers maps a Namespace to the block that owns it, so ServeWire can
	// refresh in the background; copy-on-write, read without a lock.
	handlers atomic.Pointer[map[Namespace]*Nodecache]
	hmu      sync.Mutex

	snap snapshotter

	// pins is the set of pinned keys (pin.go); nil until a block pins.
	pins   atomic.Pointer[pinSet]
	pinReg pinState

	// clock is time.Now; tests move it forward to expire entries. In
	// memory only its monotonic reading counts (see now).
	clock func() time.Time
	// origin is the clock's reading when the store was made.
	origin time.Time
	// wall, when set, is the wall clock the snapshot converts with
	// (otherwise the clock's wall reading); tests step it.
	wall func() time.Time
}

// now returns the store's time: origin's wall time plus the monotonic time
// elapsed since then. Entry times and every age in memory are on this
// scale, so a step of the wall clock (NTP, an operator, a resumed VM)
// changes no entry's freshness. The wall clock is read only to convert
// times to and from the snapshot file (wallOffset).
func (s *Store) now() time.Time { return s.origin.Add(s.clock().Sub(s.origin)) }

// wallNow is the wall clock.
func (s *Store) wallNow() time.Time {
	if s.wall != nil {
		return s.wall().Round(0)
	}
	return s.clock().Round(0)
}

// wallOffset is what to add to a wall-clock time to put it on the store's
// scale: zero until the wall clock is stepped. It is rounded to the
// millisecond, so that the jitter between two clock readings never moves
// an age.
func (s *Store) wallOffset() int64 {
	return int64(s.now().Round(0).Sub(s.wallNow()).Round(time.Millisecond))
}

// maxRefreshes is how many background refreshes run at once, process-wide:
// enough to keep a busy node's hot names fresh (each takes an upstream
// round trip), few enough that a mass expiry does not flood the upstreams.
const maxRefreshes = 128

type shard struct {
	mu          sync.RWMutex
	m           map[uint64]*entry
	small, main fifo
	ghost       ghostRing
	budget      int64 // bytes for entries in this shard
}

// NewStore returns an empty store that keeps at most budget bytes.
func NewStore(budget int64) *Store {
	s := &Store{clock: time.Now, origin: time.Now(), refreshes: make(chan struct{}, maxRefreshes), keys: newKeyHasher()}
	for i := range s.shards {
		s.shards[i].m = make(map[uint64]*entry)
	}
	s.Resize(budget)
	empty := map[Namespace]*Nodecache{}
	s.handlers.Store(&empty)
	return s
}

// Resize sets the memory budget in bytes and evicts down to it.
func (s *Store) Resize(budget int64) {
	s.budget.Store(budget)
	per := budget / numShards
	ghosts := max(int(per/(64*ghostEntryCost)), 16)
	s.ghostBytes.Store(int64(numShards * ghosts * ghostEntryCost))
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.budget = max(per-int64(ghosts*ghostEntryCost), 0)
		sh.ghost.resize(ghosts)
		s.evictLocked(sh)
		sh.mu.Unlock()
	}
}

// Budget returns the memory budget in bytes.
func (s *Store) Budget() int64 { return s.budget.Load() }

// Len returns the number of entries.
func (s *Store) Len() int { return int(s.entries.Load()) }

// Bytes returns the accounted size of all entries, including ghost memory.
func (s *Store) Bytes() int64 { return s.bytes.Load() + s.ghostBytes.Load() }

// Evictions returns how many entries were evicted for space.
func (s *Store) Evictions() uint64 { return s.evictions.Load() }

func (s *Store) shardOf(key uint64) *shard { return &s.shards[key&(numShards-1)] }

// get returns the entry for the key, or nil. It records the access.
func (s *Store) get(key uint64, ns Namespace, flags uint8, qtype, qclass uint16, name []byte) *entry {
	sh := s.shardOf(key)
	sh.mu.RLock()
	e := sh.m[key]
	sh.mu.RUnlock()
	if e == nil || !e.matches(ns, flags, qtype, qclass, name) {
		return nil
	}
	if f := e.freq.Load(); f < 3 {
		e.freq.CompareAndSwap(f, f+1)
	}
	return e
}

// peek returns the entry for the key without recording an access.
func (s *Store) peek(key uint64) *entry {
	sh := s.shardOf(key)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.m[key]
}

// put inserts e, replacing any entry with the same key. A replacement
// inherits the old entry's queue and frequency: a refreshed hot name stays
// hot. It reports whether e was admitted (it may be too large).
func (s *Store) put(e *entry) bool {
	e.key = s.keys.keyOf(e.ns, e.flags, e.qtype, e.qclass, e.name)
	s.markPinned(e)
	sh := s.shardOf(e.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e.size > sh.budget/8 {
		return false
	}
	q := queueSmall
	if old := sh.m[e.key]; old != nil {
		q = old.queue
		e.freq.Store(old.freq.Load())
		s.unlinkLocked(sh, old)
	} else if sh.ghost.remove(e.key) {
		q = queueMain
	}
	sh.m[e.key] = e
	if q == queueMain {
		sh.main.pushHead(e)
	} else {
		sh.small.pushHead(e)
	}
	e.queue = q
	s.entries.Add(1)
	s.bytes.Add(e.size)
	s.evictLocked(sh)
	return true
}

// remove deletes e if it is still the entry for its key.
func (s *Store) remove(e *entry) {
	sh := s.shardOf(e.key)
	sh.mu.Lock()
	if sh.m[e.key] == e {
		s.unlinkLocked(sh, e)
	}
	sh.mu.Unlock()
}

func (s *Store) unlinkLocked(sh *shard, e *entry) {
	delete(sh.m, e.key)
	if e.queue == queueMain {
		sh.main.unlink(e)
	} else {
		sh.small.unlink(e)
	}
	e.queue = queueNone
	s.entries.Add(-1)
	s.bytes.Add(-e.size)
}

// evictLocked applies S3-FIFO until the shard fits its budget. Pinned
// entries count against the budget but are never evicted: they go to (or
// round) the main queue; once a full round of the main queue found only
// pinned entries, only the small queue is evicted from, and when that is
// empty too the shard stays over its budget.
func (s *Store) evictLocked(sh *shard) {
	var pinnedRound int64 // bytes of pinned entries rounded since the last eviction
	for sh.small.bytes+sh.main.bytes > sh.budget {
		mainPinned := sh.main.tail != nil && pinnedRound >= sh.main.bytes
		if sh.small.tail != nil && (sh.small.bytes > sh.budget/10 || sh.main.tail == nil || mainPinned) {
			e := sh.small.tail
			sh.small.unlink(e)
			if e.pinned.Load() || e.freq.Load() > 0 { // pinned, or asked for again since insertion
				if !e.pinned.Load() {
					pinnedRound = 0 // the main queue holds an evictable entry again
				} else {
					pinnedRound += e.size
				}
				e.freq.Store(0)
				e.queue = queueMain
				sh.main.pushHead(e)
				continue
			}
			delete(sh.m, e.key)
			e.queue = queueNone
			sh.ghost.add(e.key)
			s.entries.Add(-1)
			s.bytes.Add(-e.size)
			s.evictions.Add(1)
			evictions.Inc()
			continue
		}
		e := sh.main.tail
		if e == nil || mainPinned {
			return
		}
		sh.main.unlink(e)
		if e.pinned.Load() {
			pinnedRound += e.size
			sh.main.pushHead(e)
			continue
		}
		pinnedRound = 0
		if f := e.freq.Load(); f > 0 {
			e.freq.Store(f - 1)
			sh.main.pushHead(e)
			continue
		}
		delete(sh.m, e.key)
		e.queue = queueNone
		s.entries.Add(-1)
		s.bytes.Add(-e.size)
		s.evictions.Add(1)
		evictions.Inc()
	}
}

// all returns every entry; the entries are immutable, so the caller may read
// them after the locks are released.
func (s *Store) all() []*entry {
	out := make([]*entry, 0, s.Len())
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for e := sh.main.tail; e != nil; e = e.prev {
			out = append(out, e)
		}
		for e := sh.small.tail; e != nil; e = e.prev {
			out = append(out, e)
		}
		sh.mu.RUnlock()
	}
	return out
}

// fifo is an intrusive doubly linked queue; head is newest, tail oldest.
type fifo struct {
	head, tail *entry
	bytes      int64
}

func (f *fifo) pushHead(e *entry) {
	e.prev, e.next = nil, f.head
	if f.head != nil {
		f.head.prev = e
	}
	f.head = e
	if f.tail == nil {
		f.tail = e
	}
	f.bytes += e.size
}

func (f *fifo) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		f.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		f.tail = e.prev
	}
	e.prev, e.next = nil, nil
	f.bytes -= e.size
}

// ghostRing remembers the keys of recently evicted one-hit entries.
type ghostRing struct {
	ring []uint64
	pos  int
	set  map[uint64]int // key -> ring index
}

func (g *ghostRing) capacity() int { return len(g.ring) }

func (g *ghostRing) resize(n int) {
	if n == len(g.ring) {
		return
	}
	g.ring = make([]uint64, n)
	g.pos = 0
	g.set = make(map[uint64]int, n)
}

func (g *ghostRing) add(key uint64) {
	if old := g.ring[g.pos]; old != 0 && g.set[old] == g.pos {
		delete(g.set, old)
	}
	g.ring[g.pos] = key
	g.set[key] = g.pos
	g.pos = (g.pos + 1) % len(g.ring)
}

func (g *ghostRing) remove(key uint64) bool {
	i, ok := g.set[key]
	if ok {
		delete(g.set, key)
		g.ring[i] = 0
	}
	return ok
}
