package clientbudget

import "net/netip"

// lru holds at most cap token buckets, dropping the least recently used
// client's when a new client needs room. Its nodes live in one slice and
// link by index, so it allocates nothing once full.
type lru struct {
	cap   int
	index map[netip.Addr]int32
	nodes []lruNode
	head  int32 // most recently used, -1 when empty
	tail  int32 // least recently used
}

type lruNode struct {
	key        netip.Addr
	b          bucket
	prev, next int32
}

func newLRU(cap int) lru {
	return lru{cap: cap, index: make(map[netip.Addr]int32), head: -1, tail: -1}
}

func (l *lru) len() int { return len(l.nodes) }

func (l *lru) clear() {
	clear(l.index)
	l.nodes = l.nodes[:0]
	l.head, l.tail = -1, -1
}

// get returns key's bucket, marking it most recently used; nil if absent.
func (l *lru) get(key netip.Addr) *bucket {
	i, ok := l.index[key]
	if !ok {
		return nil
	}
	l.unlink(i)
	l.pushFront(i)
	return &l.nodes[i].b
}

// add inserts key (absent) with b, evicting the least recently used key
// when full, and returns its bucket.
func (l *lru) add(key netip.Addr, b bucket) *bucket {
	var i int32
	if len(l.nodes) < l.cap {
		l.nodes = append(l.nodes, lruNode{})
		i = int32(len(l.nodes) - 1)
	} else {
		i = l.tail
		l.unlink(i)
		delete(l.index, l.nodes[i].key)
	}
	l.nodes[i] = lruNode{key: key, b: b}
	l.index[key] = i
	l.pushFront(i)
	return &l.nodes[i].b
}

func (l *lru) unlink(i int32) {
	n := &l.nodes[i]
	if n.prev >= 0 {
		l.nodes[n.prev].next = n.next
	} else {
		l.head = n.next
	}
	if n.next >= 0 {
		l.nodes[n.next].prev = n.prev
	} else {
		l.tail = n.prev
	}
}

func (l *lru) pushFront(i int32) {
	n := &l.nodes[i]
	n.prev, n.next = -1, l.head
	if l.head >= 0 {
		l.nodes[l.head].prev = i
	}
	l.head = i
	if l.tail < 0 {
		l.tail = i
	}
}
