package nodecache

import (
	"encoding/binary"
	"errors"
	"sync"
)

// staleTTL is the TTL of a stale answer (RFC 8767 section 4 suggests 30 s).
const staleTTL = 30

var errShortBuffer = errors.New("output buffer too small")

// renderedLen returns how many bytes render writes for e and q.
func renderedLen(e *entry, q *query, staleEDE bool, proto Proto) (n int, truncated bool) {
	opt := 0
	if q.edns {
		opt = 11
		if staleEDE {
			opt += 6
		}
	}
	n = len(e.wire) + opt
	if proto == UDP && n > q.maxUDP() {
		return 12 + q.nameLen + 4 + opt, true
	}
	return n, false
}

// render writes e as the answer to q into out: the stored bytes with the
// client's ID, flags and question casing, every TTL set to ttl and, when the
// client sent EDNS0, our OPT record (with EDE 3 for stale answers). A UDP
// answer that does not fit the client's buffer is cut to header, question
// and OPT with TC set. It returns the length written.
func render(out []byte, e *entry, q *query, ttl uint32, staleEDE bool, proto Proto) (int, error) {
	n, truncated := renderedLen(e, q, staleEDE, proto)
	if len(out) < n {
		return 0, errShortBuffer
	}
	w := e.wire
	var end int
	if truncated {
		end = 12 + q.nameLen + 4
		copy(out, w[:end])
		binary.BigEndian.PutUint32(out[6:], 0) // ANCOUNT, NSCOUNT
		binary.BigEndian.PutUint16(out[10:], 0)
	} else {
		end = copy(out, w)
		for _, off := range e.ttlOffs {
			binary.BigEndian.PutUint32(out[off:], ttl)
		}
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
		binary.BigEndian.PutUint16(o[3:], advertisedUDPSize)
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
