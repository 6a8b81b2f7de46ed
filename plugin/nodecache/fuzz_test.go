package nodecache

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzNow is fixed so that snapshot seeds do not age out of their window.
var fuzzNow = time.Unix(1_800_000_000, 0)

// FuzzDecodeSnapshot: any bytes either decode into entries that are valid
// to serve, or are rejected with an error; never a panic.
func FuzzDecodeSnapshot(f *testing.F) {
	s := NewStore(8 << 20)
	for _, name := range []string{"a.example.org.", "b.example.org."} {
		s.put(testEntry(f, 1, name, 600, fuzzNow))
	}
	var buf bytes.Buffer
	if err := encodeSnapshot(&buf, s.all(), fuzzNow); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(snapshotMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecoded(t, b)
		// Also with a correct checksum, so mutations reach the entry parser.
		if len(b) >= headerLen+4 {
			fixed := append([]byte(nil), b...)
			binary.BigEndian.PutUint32(fixed[len(fixed)-4:], crc32.Checksum(fixed[:len(fixed)-4], castagnoli))
			checkDecoded(t, fixed)
		}
	})
}

func checkDecoded(t *testing.T, b []byte) {
	entries, _, err := decodeSnapshot(b, fuzzNow)
	if err != nil {
		if len(entries) != 0 {
			t.Fatal("entries returned with an error")
		}
		return
	}
	{
		out := make([]byte, 65535+64)
		for _, e := range entries {
			var q query
			q.nameLen = copy(q.name[:], e.name)
			q.qtype, q.qclass = e.qtype, e.qclass
			q.setLimit(TCP, advertisedUDPSize)
			n, err := render(out, e, &q, 60, false)
			if err != nil {
				t.Fatalf("render of a decoded entry: %v", err)
			}
			if _, err := indexWire(out[:n]); err != nil {
				t.Fatalf("rendered entry does not parse: %v", err)
			}
		}
	}
}

// FuzzServeWire: any query bytes against a populated store either miss or
// produce an answer that fits, echoes the ID and unpacks.
func FuzzServeWire(f *testing.F) {
	s := NewStore(8 << 20)
	s.put(testEntry(f, 5, "fuzz.example.org.", 600, fuzzNow))
	for _, q := range [][]byte{
		packQuery(f, "fuzz.example.org.", dns.TypeA, 0, false),
		packQuery(f, "FUZZ.example.ORG.", dns.TypeA, 1232, false),
		packQuery(f, "fuzz.example.org.", dns.TypeA, 100, true),
		packQuery(f, "other.example.org.", dns.TypeAAAA, 4096, false),
	} {
		f.Add(q, false)
		f.Add(q, true)
	}
	f.Fuzz(func(t *testing.T, q []byte, tcp bool) {
		proto := UDP
		if tcp {
			proto = TCP
		}
		out := make([]byte, 4096)
		n, st := s.ServeWire(5, q, proto, fuzzNow, out)
		if st == Miss {
			if n != 0 {
				t.Fatalf("miss with %d bytes", n)
			}
			return
		}
		var pq query
		if err := parseQuery(q, &pq); err != nil {
			t.Fatalf("answered a query that does not parse: %v", err)
		}
		pq.setLimit(proto, advertisedUDPSize)
		if n > pq.limit {
			t.Fatalf("%v answer of %d bytes for a %d byte limit", proto, n, pq.limit)
		}
		m := new(dns.Msg)
		if err := m.Unpack(out[:n]); err != nil {
			t.Fatalf("answer does not unpack: %v", err)
		}
		if m.Id != binary.BigEndian.Uint16(q) || !m.Response || len(m.Question) != 1 {
			t.Fatalf("bad answer header: %v", m.MsgHdr)
		}
		if !bytes.Equal(out[12:12+pq.nameLen], q[12:12+pq.nameLen]) {
			t.Fatal("question casing not echoed")
		}
		if (m.IsEdns0() != nil) != pq.edns {
			t.Fatalf("OPT in answer %v, query had EDNS0 %v", m.IsEdns0() != nil, pq.edns)
		}
	})
}

// FuzzIndexWire: the stored-message parser behind snapshot restore never
// panics, and what it accepts renders within bounds.
func FuzzIndexWire(f *testing.F) {
	e := testEntry(f, 1, "index.example.org.", 600, fuzzNow)
	f.Add(append([]byte(nil), e.wire...))
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		wire := append([]byte(nil), b...)
		e, why := entryFromWire(wire, 1, 0, fuzzNow.UnixNano(), 60, 60)
		if e == nil {
			if why == "" {
				t.Fatal("rejected without a reason")
			}
			return
		}
		for _, off := range e.ttlOffs {
			if int(off)+4 > len(e.wire) {
				t.Fatalf("TTL offset %d outside %d bytes", off, len(e.wire))
			}
		}
		var q query
		q.nameLen = copy(q.name[:], e.name)
		q.qtype, q.qclass = e.qtype, e.qclass
		out := make([]byte, len(e.wire)+32)
		for _, proto := range []Proto{TCP, UDP} {
			q.setLimit(proto, 512)
			n, err := render(out, e, &q, 1, false)
			if err != nil {
				t.Fatal(err)
			}
			// A truncated answer keeps whole records: it parses as well.
			if _, err := indexWire(out[:n]); err != nil || n > q.limit {
				t.Fatalf("%v: %d-byte answer for a limit of %d: %v", proto, n, q.limit, err)
			}
		}
	})
}

// FuzzPackName: the fast name packer agrees with miekg/dns wherever it
// accepts a name.
func FuzzPackName(f *testing.F) {
	for _, s := range []string{".", "example.org.", "a.b.c.", "no-dot", "a..b.", `esc\.aped.org.`, "x.", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var fast, slow [maxNameWire]byte
		n, ok := packName(s, fast[:])
		if !ok {
			return
		}
		m, err := dns.PackDomainName(s, slow[:], 0, nil, false)
		if err != nil {
			t.Fatalf("packName accepted %q, miekg/dns did not: %v", s, err)
		}
		if !bytes.Equal(fast[:n], slow[:m]) {
			t.Fatalf("%q: packName %x, miekg/dns %x", s, fast[:n], slow[:m])
		}
	})
}
