package nodecache

import (
	"encoding/binary"
	"errors"

	"github.com/miekg/dns"
)

// Proto is the transport a query arrived on; it decides whether an answer
// must fit the client's UDP buffer.
type Proto uint8

const (
	// UDP answers are truncated (TC set) when larger than the client's buffer.
	UDP Proto = iota
	// TCP answers are sent whole.
	TCP
)

const (
	// advertisedUDPSize is the EDNS0 buffer size we announce to clients and
	// ask upstreams for (DNS flag day 2020); also the default of max_udp_size.
	advertisedUDPSize = 1232
	// maxNameWire is the longest domain name in wire format.
	maxNameWire = 255

	optNSID    = 3 // EDNS0 NSID option code.
	optDAU     = 5 // EDNS0 option codes whose content is never invalid.
	optDHU     = 6
	optN3U     = 7
	optCookie  = 10
	optPadding = 12

	optEDE   = 15 // EDNS0 Extended DNS Error option code.
	edeStale = 3  // Extended DNS Error "Stale Answer".
)

// query is what the cache needs of a client query; it is filled from raw
// bytes (parseQuery) or from a dns.Msg (queryFromMsg) without allocating.
type query struct {
	id      uint16
	rd      bool
	cd      bool
	ad      bool
	qtype   uint16
	qclass  uint16
	name    [maxNameWire]byte // wire-format qname in the client's casing
	nameLen int

	edns    bool
	do      bool
	udpSize uint16 // client's EDNS0 buffer size, 0 without EDNS0
	nsid    bool   // client asked for NSID: leave the answer to the nsid plugin

	limit int    // largest answer this client gets (setLimit)
	adv   uint16 // EDNS0 buffer size announced in our OPT record
}

func (q *query) wireName() []byte { return q.name[:q.nameLen] }

// setLimit fixes the largest answer q gets: any size over TCP; over UDP the
// client's EDNS0 buffer size (512 without EDNS0, and for sizes below 512,
// RFC 6891 section 6.2.5), but never more than maxUDP, the block's
// max_udp_size. Our OPT record announces at most maxUDP.
func (q *query) setLimit(proto Proto, maxUDP uint16) {
	q.adv = min(advertisedUDPSize, maxUDP)
	if proto == TCP {
		q.limit = dns.MaxMsgSize
		return
	}
	size := dns.MinMsgSize
	if q.edns && int(q.udpSize) > size {
		size = int(q.udpSize)
	}
	q.limit = min(size, max(int(maxUDP), dns.MinMsgSize))
}

var (
	errNotQuery   = errors.New("not a plain query")
	errMalformed  = errors.New("malformed query")
	errBadVersion = errors.New("unsupported EDNS version")
)

// parseQuery reads the header, the single question and an optional OPT
// record of a raw query. Anything else (other opcodes, several questions,
// records besides OPT, compressed question names, EDNS version != 0, an
// EDNS0 option that does not unpack) is reported as an error so the caller
// hands the query to the full server.
//
// This is the one rule of the wire path for what a query must look like: it
// accepts only queries that CoreDNS's server (miekg/dns's header check and
// Unpack, then EDNS version and class checks) passes to the plugin chain
// unchanged, so the wire path never answers what the chain would answer with
// FORMERR, NOTIMP, BADVERS or REFUSED, or not at all. For the EDNS0 options
// whose content miekg/dns validates (client subnet, expire, keepalive, ...)
// it asks miekg/dns itself, which costs an unpack on those queries only.
func parseQuery(b []byte, q *query) error {
	if len(b) < 12 {
		return errMalformed
	}
	flags := binary.BigEndian.Uint16(b[2:])
	if flags&0x8000 != 0 || (flags>>11)&0xF != dns.OpcodeQuery {
		return errNotQuery
	}
	qd := binary.BigEndian.Uint16(b[4:])
	an := binary.BigEndian.Uint16(b[6:])
	ns := binary.BigEndian.Uint16(b[8:])
	ar := binary.BigEndian.Uint16(b[10:])
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return errNotQuery
	}
	q.id = binary.BigEndian.Uint16(b)
	q.rd = flags&0x0100 != 0
	q.ad = flags&0x0020 != 0
	q.cd = flags&0x0010 != 0

	off := 12
	n := 0
	for {
		if off >= len(b) {
			return errMalformed
		}
		l := int(b[off])
		if l&0xC0 != 0 { // compression pointers or reserved label types
			return errMalformed
		}
		if n+l+1 > maxNameWire || off+l+1 > len(b) {
			return errMalformed
		}
		copy(q.name[n:], b[off:off+l+1])
		n += l + 1
		off += l + 1
		if l == 0 {
			break
		}
	}
	q.nameLen = n
	if off+4 > len(b) {
		return errMalformed
	}
	q.qtype = binary.BigEndian.Uint16(b[off:])
	q.qclass = binary.BigEndian.Uint16(b[off+2:])
	off += 4

	q.edns, q.do, q.udpSize, q.nsid = false, false, 0, false
	if ar == 0 {
		if off != len(b) {
			return errMalformed
		}
		return nil
	}
	// The one additional record must be an OPT with the root owner name.
	if off+11 > len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != dns.TypeOPT {
		return errNotQuery
	}
	q.edns = true
	q.udpSize = binary.BigEndian.Uint16(b[off+3:])
	if b[off+6] != 0 { // EDNS version
		return errBadVersion
	}
	q.do = b[off+7]&0x80 != 0
	rdlen := int(binary.BigEndian.Uint16(b[off+9:]))
	off += 11
	if off+rdlen != len(b) {
		return errMalformed
	}
	check := false // an option whose content miekg/dns validates
	for end := off + rdlen; off < end; {
		if off+4 > end {
			return errMalformed
		}
		code := binary.BigEndian.Uint16(b[off:])
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		off += 4 + l
		if off > end {
			return errMalformed
		}
		switch code {
		case optNSID:
			q.nsid = true
		case optDAU, optDHU, optN3U, optCookie, optPadding:
			// Any content unpacks.
		default:
			check = true
		}
	}
	if check && new(dns.Msg).Unpack(b) != nil {
		// An option miekg/dns cannot unpack (e.g. a client subnet with a
		// bad family or prefix): CoreDNS's server answers FORMERR.
		return errMalformed
	}
	return nil
}

// queryFromMsg fills q from an unpacked query. It fails for messages the
// cache does not handle.
func queryFromMsg(r *dns.Msg, q *query) error {
	if r.Response || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 || len(r.Answer) != 0 || len(r.Ns) != 0 {
		return errNotQuery
	}
	q.id = r.Id
	q.rd = r.RecursionDesired
	q.cd = r.CheckingDisabled
	q.ad = r.AuthenticatedData
	qs := r.Question[0]
	q.qtype, q.qclass = qs.Qtype, qs.Qclass
	n, ok := packName(qs.Name, q.name[:])
	if !ok {
		var err error
		if n, err = dns.PackDomainName(qs.Name, q.name[:], 0, nil, false); err != nil {
			return errMalformed
		}
	}
	q.nameLen = n
	q.edns, q.do, q.udpSize, q.nsid = false, false, 0, false
	for _, rr := range r.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok {
			return errNotQuery // TSIG or other records: not for the cache
		}
		if opt.Version() != 0 {
			return errBadVersion
		}
		q.edns = true
		q.do = opt.Do()
		q.udpSize = opt.UDPSize()
		for _, o := range opt.Option {
			if o.Option() == optNSID {
				q.nsid = true
			}
		}
	}
	return nil
}

// cacheable reports whether answers to q may be stored at all.
func (q *query) cacheable() bool {
	switch q.qtype {
	case dns.TypeAXFR, dns.TypeIXFR, dns.TypeOPT, dns.TypeTSIG, dns.TypeTKEY:
		return false
	}
	return true
}

// packName writes a fully qualified name without escapes in wire format;
// it reports false for anything else, which dns.PackDomainName then handles.
// It is the common case of the hit path, at a fraction of the cost.
func packName(s string, buf []byte) (int, bool) {
	if s == "." {
		buf[0] = 0
		return 1, true
	}
	if s == "" {
		return 0, false
	}
	n, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			return 0, false
		case '.':
			l := i - start
			if l == 0 || l > 63 || n+l+2 > maxNameWire {
				return 0, false
			}
			buf[n] = byte(l)
			copy(buf[n+1:], s[start:i])
			n += l + 1
			start = i + 1
		}
	}
	if start != len(s) {
		return 0, false // not fully qualified
	}
	buf[n] = 0
	return n + 1, true
}
