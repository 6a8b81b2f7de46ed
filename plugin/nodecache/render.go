package nodecache

import (
	"encoding/binary"
	"errors"
	"sync"
)

// staleTTL is the TTL of a stale answer (RFC 8767 section 4 suggests 30 s).
const staleTTL = 30

var errShortBuffer = errors.New("output buffer too small")

// renderedLen returns how many bytes render writes for e and q, and whether
// that is a truncated answer: when the whole answer exceeds q.limit.
func renderedLen(e *entry, q *query, staleEDE bool) (n int, truncated bool) {
	opt := optLen(q, staleEDE)
	n = len(e.wire) + opt
	if n > q.limit {
		end, _ := e.fit(q.limit - opt)
		return end + opt, true
	}
	return n, false
}

func optLen(q *query, staleEDE bool) int {
	switch {
	case !q.edns:
		return 0
	case staleEDE:
		return 11 + 6
	default:
		return 11
	}
}

// fit returns the end of the longest prefix of e.wire that holds whole
// records and is at most size bytes long, and how many records it holds.
// Compression pointers only point backwards, so the prefix is a valid
// message once its counts are fixed.
func (e *entry) fit(size int) (end, records int) {
	end = 12 + len(e.name) + 4
	for i, off := range e.ttlOffs {
		next := int(off) + 6 + int(binary.BigEndian.Uint16(e.wire[int(off)+4:]))
		if next > size {
			return end, i
		}
		end = next
	}
	return end, len(e.ttlOffs)
}

// render writes e as the answer to q into out: the stored bytes with the
// client's ID, flags and question casing, every TTL set to ttl and, when the
// client sent EDNS0, our OPT record (with EDE 3 for stale answers). An
// answer larger than q.limit keeps as many whole records as fit, in order
// (answer, authority, additional), with TC set: what miekg/dns's
// Msg.Truncate does for stock CoreDNS, and what stub resolvers that never
// retry over TCP (musl) need to resolve a large RRset at all. It returns the
// length written.
func render(out []byte, e *entry, q *query, ttl uint32, staleEDE bool) (int, error) {
	n, truncated := renderedLen(e, q, staleEDE)
	if len(out) < n {
		return 0, errShortBuffer
	}
	w := e.wire
	offs := e.ttlOffs
	var end int
	if truncated {
		var kept int
		end, kept = e.fit(q.limit - optLen(q, staleEDE))
		copy(out, w[:end])
		an := min(int(binary.BigEndian.Uint16(w[6:])), kept)
		ns := min(int(binary.BigEndian.Uint16(w[8:])), kept-an)
		binary.BigEndian.PutUint16(out[6:], uint16(an))
		binary.BigEndian.PutUint16(out[8:], uint16(ns))
		binary.BigEndian.PutUint16(out[10:], uint16(kept-an-ns))
		offs = offs[:kept]
	} else {
		end = copy(out, w)
	}
	for _, off := range offs {
		binary.BigEndian.PutUint32(out[off:], ttl)
	}
	binary.BigEndian.PutUint16(out, q.id)
	b2 := byte(0x80) | w[2]&0x04 // QR, AA
	if truncated {
		b2 |= 0x02
	}
	if q.rd {
		b2 |= 0x01
	}
	b3 := w[3] & 0x8F // RA, RCODE
	if q.do || q.ad {
		b3 |= w[3] & 0x20 // AD only for clients that asked for it (RFC 6840 5.7)
	}
	if q.cd {
		b3 |= 0x10
	}
	out[2], out[3] = b2, b3
	copy(out[12:], q.wireName()) // same length as the stored name
	if q.edns {
		o := out[end:]
		o[0] = 0
		binary.BigEndian.PutUint16(o[1:], 41)
		binary.BigEndian.PutUint16(o[3:], q.adv)
		o[5], o[6], o[7], o[8] = 0, 0, 0, 0
		if q.do {
			o[7] = 0x80
		}
		if staleEDE {
			binary.BigEndian.PutUint16(o[9:], 6)
			binary.BigEndian.PutUint16(o[11:], optEDE)
			binary.BigEndian.PutUint16(o[13:], 2)
			binary.BigEndian.PutUint16(o[15:], edeStale)
		} else {
			binary.BigEndian.PutUint16(o[9:], 0)
		}
		ar := binary.BigEndian.Uint16(out[10:])
		binary.BigEndian.PutUint16(out[10:], ar+1)
	}
	return n, nil
}

// bufPool holds answer buffers for the hit path; most answers fit 4 KiB.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		b := make([]byte, n)
		*bp = b
	}
	*bp = (*bp)[:cap(*bp)]
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) > 65536+64 {
		return
	}
	bufPool.Put(bp)
}
