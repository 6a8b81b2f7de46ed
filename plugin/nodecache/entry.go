package nodecache

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"time"
)

// entry is one cached answer. Everything but the atomics and the queue links
// is immutable after creation, so readers use an entry without a lock.
type entry struct {
	key    uint64
	ns     Namespace
	flags  uint8 // flagDO, flagCD
	qtype  uint16
	qclass uint16
	name   []byte // lower-cased wire qname (aliases wire)

	// wire is the packed answer: ID 0, the stored question, answer,
	// authority and additional sections without OPT/TSIG, compressed.
	wire    []byte
	ttlOffs []uint16 // offsets of every RR's TTL field in wire

	stored int64  // insert time on the store's monotonic scale (Store.now), ns
	ttl    uint32 // capped TTL in seconds at insert time
	stale  uint32 // stale window in seconds (of the block that wrote it)

	freq       atomic.Uint32 // S3-FIFO access frequency, capped at 3
	hits       atomic.Uint32 // lifetime hits (saturating), for prefetch
	refreshing atomic.Bool   // a background refresh is in flight
	retryAfter atomic.Int64  // unix ns before which a failed refresh is not retried
	pinned     atomic.Bool   // a pinned name (pin.go): never evicted, no stale window

	// queue links and bookkeeping, guarded by the shard lock.
	prev, next *entry
	queue      uint8
	size       int64
}

// entryOverhead approximates the memory of an entry beyond its wire bytes:
// the struct (a 192-byte size class), the map slot, the TTL offsets and the
// size-class rounding of each allocation. Calibrated with `make bench-mem`:
// one million unique names through a 32 MiB budget left ~107k entries and
// ~45 MiB of live heap above the process's baseline with 208 here, i.e. ~130
// bytes per entry unaccounted.
const entryOverhead = 336

func (e *entry) expires() int64 { return e.stored + int64(e.ttl)*int64(time.Second) }

// remaining returns the TTL left at now: the stored TTL less the whole
// seconds of age (as the stock cache counts), negative once expired.
func (e *entry) remaining(now int64) int64 {
	age := max(now-e.stored, 0)
	return int64(e.ttl) - age/int64(time.Second)
}

// servable reports whether e is fresh, or still within its stale window. A
// pinned entry has no stale window: it is served stale for as long as its
// upstreams fail.
func (e *entry) servable(now int64) (fresh, stale bool) {
	fresh, stale = servableAt(e.stored, e.ttl, e.stale, now)
	return fresh, stale || (!fresh && e.pinned.Load())
}

// snapshotStale is the stale window written to the snapshot: a pinned
// entry's is the longest a snapshot holds, so a restore keeps it.
func (e *entry) snapshotStale() uint32 {
	if e.pinned.Load() {
		return maxTTLLimit
	}
	return e.stale
}

// servableAt is servable for an entry stored at stored with ttl and a stale
// window of stale seconds.
func servableAt(stored int64, ttl, stale uint32, now int64) (fresh, inStale bool) {
	exp := stored + int64(ttl)*int64(time.Second)
	if now < exp {
		return true, false
	}
	return false, now < exp+int64(stale)*int64(time.Second)
}

// matches compares the full key.
func (e *entry) matches(ns Namespace, flags uint8, qtype, qclass uint16, name []byte) bool {
	return e.ns == ns && e.flags == flags && e.qtype == qtype && e.qclass == qclass && equalFoldWire(e.name, name)
}

var errBadWire = errors.New("malformed stored message")

// skipName returns the offset after the (possibly compressed) name at off.
func skipName(b []byte, off int) (int, error) {
	for n := 0; ; n++ {
		if off >= len(b) || n > 128 {
			return 0, errBadWire
		}
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			if off+2 > len(b) {
				return 0, errBadWire
			}
			return off + 2, nil
		case l&0xC0 != 0:
			return 0, errBadWire
		}
		off += l + 1
	}
}

// parsedWire is what indexWire learns about a stored message.
type parsedWire struct {
	name          []byte
	qtype, qclass uint16
	ttlOffs       []uint16
}

// indexWire validates a stored answer and finds its question and the TTL
// offsets of its records. It accepts only what newEntry produces: one
// uncompressed question and no OPT or TSIG records.
func indexWire(b []byte) (parsedWire, error) {
	var p parsedWire
	if len(b) < 12 || len(b) > 0xFFFF {
		return p, errBadWire
	}
	if binary.BigEndian.Uint16(b[4:]) != 1 {
		return p, errBadWire
	}
	off := 12
	for {
		if off >= len(b) {
			return p, errBadWire
		}
		l := int(b[off])
		if l&0xC0 != 0 || off+l+1-12 > maxNameWire {
			return p, errBadWire
		}
		off += l + 1
		if l == 0 {
			break
		}
	}
	if off+4 > len(b) {
		return p, errBadWire
	}
	p.name = b[12:off]
	p.qtype = binary.BigEndian.Uint16(b[off:])
	p.qclass = binary.BigEndian.Uint16(b[off+2:])
	off += 4
	count := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	if count > len(b)/11 {
		return p, errBadWire
	}
	p.ttlOffs = make([]uint16, 0, count)
	for range count {
		var err error
		if off, err = skipName(b, off); err != nil {
			return p, err
		}
		if off+10 > len(b) {
			return p, errBadWire
		}
		t := binary.BigEndian.Uint16(b[off:])
		if t == 41 || t == 250 { // OPT, TSIG are hop-by-hop, never stored
			return p, errBadWire
		}
		p.ttlOffs = append(p.ttlOffs, uint16(off+4))
		off += 10 + int(binary.BigEndian.Uint16(b[off+8:]))
		if off > len(b) {
			return p, errBadWire
		}
	}
	if off != len(b) {
		return p, errBadWire
	}
	return p, nil
}
