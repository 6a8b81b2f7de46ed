package nodecache

import (
	"strings"
	"time"

	"github.com/coredns/coredns/plugin/pkg/response"

	"github.com/miekg/dns"
)

// minTTL is the floor of every cached TTL: a 0 s answer is kept 5 s, like
// the stock cache does, so a hot name with TTL 0 does not hammer upstream.
const minTTL = 5

// newEntry turns the upstream answer m to q into an entry, or returns nil
// with the reason it must not be cached. Like the stock cache it classifies
// with plugin/pkg/response: only NOERROR answers, NODATA and NXDOMAIN with
// an SOA are stored; SERVFAIL, REFUSED, FORMERR, truncated answers and
// answers to another question are not.
func newEntry(m *dns.Msg, ns Namespace, q *query, pol *policy, now time.Time) (*entry, string) {
	switch {
	case m == nil:
		return nil, "no answer"
	case m.Truncated:
		return nil, "truncated"
	case m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError:
		return nil, "rcode " + dns.RcodeToString[m.Rcode]
	case len(m.Question) != 1:
		return nil, "question count"
	}
	qs := m.Question[0]
	var nb [maxNameWire]byte
	n, err := dns.PackDomainName(qs.Name, nb[:], 0, nil, false)
	if err != nil || qs.Qtype != q.qtype || qs.Qclass != q.qclass || !equalFoldWire(nb[:n], q.wireName()) {
		return nil, "question mismatch"
	}

	t, _ := response.Typify(m, now)
	soa := soaOf(m)
	if t == response.NoError && len(m.Answer) > 0 && !answersQuestion(m) {
		if soa == nil {
			return nil, "CNAME chain without answer or SOA" // RFC 2308 section 5
		}
		t = response.NoData
	}
	var ttl uint32
	switch t {
	case response.NoError:
		ttl = clampTTL(minRRTTL(m), pol.maxTTL)
	case response.NameError, response.NoData:
		if soa == nil {
			return nil, "negative answer without SOA"
		}
		// RFC 2308 section 5: the SOA's TTL, bounded by its MINIMUM field.
		ttl = clampTTL(min(rfc2181TTL(soa.Hdr.Ttl), rfc2181TTL(soa.Minttl)), pol.denialTTL)
	default:
		return nil, "response type " + t.String()
	}
	if ttl == 0 {
		return nil, "zero TTL cap"
	}

	stored := *m
	stored.Id = 0
	stored.Compress = true
	stored.Extra = make([]dns.RR, 0, len(m.Extra))
	for _, rr := range m.Extra {
		switch rr.Header().Rrtype {
		case dns.TypeOPT, dns.TypeTSIG: // hop-by-hop: never cached
		default:
			stored.Extra = append(stored.Extra, rr)
		}
	}
	wire, err := stored.Pack()
	if err != nil {
		return nil, "pack: " + err.Error()
	}
	return entryFromWire(wire, ns, queryFlags(q.do, q.cd), now.UnixNano(), ttl, pol.staleWindow)
}

// entryFromWire indexes a packed answer and builds its entry. The stored
// question is lower-cased in place: it is rewritten per client anyway.
func entryFromWire(wire []byte, ns Namespace, flags uint8, stored int64, ttl, stale uint32) (*entry, string) {
	p, err := indexWire(wire)
	if err != nil {
		return nil, err.Error()
	}
	for i, c := range p.name {
		p.name[i] = lower(c)
	}
	wire[0], wire[1] = 0, 0
	wire[2] &= 0x04 // keep AA
	wire[3] &= 0xAF // keep RA, AD, RCODE
	e := &entry{
		ns:      ns,
		flags:   flags,
		qtype:   p.qtype,
		qclass:  p.qclass,
		name:    p.name,
		wire:    wire,
		ttlOffs: p.ttlOffs,
		stored:  stored,
		ttl:     ttl,
		stale:   stale,
	}
	e.size = int64(cap(wire) + 2*cap(p.ttlOffs) + entryOverhead)
	return e, ""
}

// rfc2181TTL reads a TTL as RFC 2181 section 8 says: a value with the top
// bit set is 0. Unbound does the same; without it an upstream's 2^32-1 would
// be served as the largest TTL.
func rfc2181TTL(ttl uint32) uint32 {
	if ttl >= 1<<31 {
		return 0
	}
	return ttl
}

// sanitizeTTLs applies rfc2181TTL to every record of an answer passed on
// without being cached (OPT's TTL field holds flags and is left alone).
func sanitizeTTLs(m *dns.Msg) {
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl = rfc2181TTL(h.Ttl)
			}
		}
	}
}

func clampTTL(ttl, maxTTL uint32) uint32 {
	return min(max(ttl, minTTL), maxTTL)
}

func minRRTTL(m *dns.Msg) uint32 {
	found := false
	ttl := uint32(0)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT || h.Rrtype == dns.TypeTSIG {
				continue
			}
			if t := rfc2181TTL(h.Ttl); !found || t < ttl {
				ttl, found = t, true
			}
		}
	}
	if !found {
		return minTTL // nothing to take a TTL from, e.g. whoami
	}
	return ttl
}

func soaOf(m *dns.Msg) *dns.SOA {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

// answersQuestion follows the CNAME chain from the question name and reports
// whether it ends in a record of the queried type (RFC 1034 3.6.2).
func answersQuestion(m *dns.Msg) bool {
	q := m.Question[0]
	if q.Qtype == dns.TypeANY || q.Qtype == dns.TypeCNAME {
		for _, rr := range m.Answer {
			if strings.EqualFold(rr.Header().Name, q.Name) {
				return true
			}
		}
		return false
	}
	name := q.Name
	for hops := 0; hops <= len(m.Answer); hops++ {
		next := ""
		for _, rr := range m.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, name) {
				continue
			}
			if h.Rrtype == q.Qtype {
				return true
			}
			if c, ok := rr.(*dns.CNAME); ok {
				next = c.Target
			}
		}
		if next == "" {
			return false
		}
		name = next
	}
	return false // CNAME loop
}
