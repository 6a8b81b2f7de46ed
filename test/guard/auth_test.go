package guard

import (
	"crypto"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

// zoneText is the data behind the one authoritative server both engines
// forward to. It plays the part of a recursive resolver answering for
// these zones (RA set, CNAME chains followed, also across zones) and of an
// authority (AA set, SOA in negative answers).
const zoneText = `
$ORIGIN diff.test.
@            3600 IN SOA   ns hostmaster 1 7200 1800 86400 300
@             300 IN NS    ns
@             300 IN MX    10 mail
@             300 IN MX    20 mail2
ns            300 IN A     192.0.2.1
mail          300 IN A     192.0.2.2
mail2         300 IN A     192.0.2.3
www           300 IN A     192.0.2.10
www           300 IN AAAA  2001:db8::10
www-tcp       300 IN A     192.0.2.12
mixedcase     300 IN A     192.0.2.11
alias         300 IN CNAME chain1
chain1        120 IN CNAME chain2
chain2         60 IN CNAME target
target        300 IN A     192.0.2.20
dangling      300 IN CNAME nowhere
tocluster     300 IN CNAME kube-dns.kube-system.svc.cluster.local.
txt           300 IN TXT   "v=spf1 -all" "a second string"
_sip._tcp     300 IN SRV   10 60 5060 sip
sip           300 IN A     192.0.2.40
*.wild        300 IN A     192.0.2.30
*.wild        300 IN TXT   "wildcard"
host.ent      300 IN A     192.0.2.50
highttl 2147483648 IN A    192.0.2.60
secure        300 IN A     192.0.2.70
secure-cd     300 IN A     192.0.2.71
nsid          300 IN A     192.0.2.72

$ORIGIN cluster.local.
@              30 IN SOA   ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30
kube-dns.kube-system.svc  30 IN A 10.0.0.10
_dns._udp.kube-dns.kube-system.svc 30 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.
web.default.svc            30 IN A    10.0.1.1
web.default.svc            30 IN A    10.0.1.2

$ORIGIN 10.in-addr.arpa.
@              30 IN SOA   ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30
10.0.0         30 IN PTR   kube-dns.kube-system.svc.cluster.local.

$ORIGIN internal.cloudapp.net.
@             300 IN SOA   ns hostmaster 1 7200 1800 86400 300
vm1           300 IN A     10.1.0.4
`

// Sizes of the big answers.
const (
	big40Name  = "big40.diff.test."
	big30Name  = "big30.diff.test."
	big120Name = "big120.diff.test."
)

// auth is the authoritative server: UDP and TCP on one loopback port.
type auth struct {
	addr    string
	zones   map[string]*dns.SOA // apex -> SOA
	rrs     map[string][]dns.RR // lower-case owner -> records
	sigs    map[string][]dns.RR // lower-case owner + "/" + type -> RRSIG
	names   map[string]bool     // every owner and every empty non-terminal
	signed  string              // the zone whose answers carry RRSIGs and AD
	mu      sync.Mutex
	queries map[string]int // "name/TYPE" (lower case) -> count
}

func startAuth(t testing.TB) *auth {
	t.Helper()
	a := &auth{zones: map[string]*dns.SOA{}, rrs: map[string][]dns.RR{}, sigs: map[string][]dns.RR{},
		names: map[string]bool{}, signed: "diff.test.", queries: map[string]int{}}
	zp := dns.NewZoneParser(strings.NewReader(zoneText), "", "")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		a.add(rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("zone data: %v", err)
	}
	for i := 1; i <= 40; i++ {
		a.add(mustRR(t, fmt.Sprintf("%s 300 IN A 198.51.100.%d", big40Name, i)))
	}
	for i := 1; i <= 30; i++ {
		a.add(mustRR(t, fmt.Sprintf("%s 300 IN AAAA 2001:db8:30::%x", big30Name, i)))
	}
	for i := 1; i <= 120; i++ {
		a.add(mustRR(t, fmt.Sprintf("%s 300 IN AAAA 2001:db8:120::%x", big120Name, i)))
	}
	a.sign(t)
	a.addr, _ = testdns.Serve(t, a)
	return a
}

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func (a *auth) add(rr dns.RR) {
	name := strings.ToLower(rr.Header().Name)
	if soa, ok := rr.(*dns.SOA); ok {
		a.zones[name] = soa
	}
	a.rrs[name] = append(a.rrs[name], rr)
	// The name and every ancestor up to the zone exist (empty non-terminals
	// answer NODATA, not NXDOMAIN).
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		a.names[name[off:]] = true
	}
}

// sign gives every RRset of the signed zone an RRSIG made with a fresh
// ECDSA key, once, so both engines see the very same bytes.
func (a *auth) sign(t testing.TB) {
	key := &dns.DNSKEY{Hdr: dns.RR_Header{Name: a.signed, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 300},
		Flags: 257, Protocol: 3, Algorithm: dns.ECDSAP256SHA256}
	priv, err := key.Generate(256)
	if err != nil {
		t.Fatal(err)
	}
	a.add(key)
	now := time.Now()
	for name, rrs := range a.rrs {
		if !dns.IsSubDomain(a.signed, name) {
			continue
		}
		byType := map[uint16][]dns.RR{}
		for _, rr := range rrs {
			byType[rr.Header().Rrtype] = append(byType[rr.Header().Rrtype], rr)
		}
		for typ, set := range byType {
			sig := &dns.RRSIG{Hdr: dns.RR_Header{Name: set[0].Header().Name, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: set[0].Header().Ttl},
				Algorithm: key.Algorithm, SignerName: a.signed, KeyTag: key.KeyTag(),
				Inception: uint32(now.Add(-time.Hour).Unix()), Expiration: uint32(now.Add(24 * time.Hour).Unix())}
			if err := sig.Sign(priv.(crypto.Signer), set); err != nil {
				t.Fatalf("sign %s %s: %v", name, dns.TypeToString[typ], err)
			}
			a.sigs[name+"/"+dns.TypeToString[typ]] = []dns.RR{sig}
		}
	}
}

// Count returns how many queries for name and type arrived.
func (a *auth) Count(name string, qtype uint16) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.queries[strings.ToLower(dns.Fqdn(name))+"/"+dns.TypeToString[qtype]]
}

func (a *auth) zoneOf(name string) string {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if a.zones[name[off:]] != nil {
			return name[off:]
		}
	}
	return ""
}

// lookup returns the records of name and type (following wildcards), and
// whether the name exists at all.
func (a *auth) lookup(name string, qtype uint16) (rrs []dns.RR, exists bool, wildcard string) {
	lname := strings.ToLower(name)
	owner := lname
	if !a.names[lname] {
		exists = false
		for off, end := dns.NextLabel(lname, 0); !end; off, end = dns.NextLabel(lname, off) {
			if a.names["*."+lname[off:]] {
				owner = "*." + lname[off:]
				break
			}
			if a.names[lname[off:]] { // closest encloser without a wildcard
				return nil, false, ""
			}
		}
		if owner == lname {
			return nil, false, ""
		}
		wildcard = owner
	}
	for _, rr := range a.rrs[owner] {
		t := rr.Header().Rrtype
		if t == qtype || (t == dns.TypeCNAME && qtype != dns.TypeCNAME) {
			c := dns.Copy(rr)
			c.Header().Name = name
			rrs = append(rrs, c)
		}
	}
	return rrs, true, wildcard
}

func (a *auth) withSigs(name, owner string, rrs []dns.RR, do bool) []dns.RR {
	if !do || len(rrs) == 0 || !dns.IsSubDomain(a.signed, strings.ToLower(owner)) {
		return rrs
	}
	for _, s := range a.sigs[strings.ToLower(owner)+"/"+dns.TypeToString[rrs[0].Header().Rrtype]] {
		c := dns.Copy(s)
		c.Header().Name = name
		rrs = append(rrs, c)
	}
	return rrs
}

// ServeDNS implements dns.Handler.
func (a *auth) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	a.mu.Lock()
	a.queries[strings.ToLower(q.Name)+"/"+dns.TypeToString[q.Qtype]]++
	a.mu.Unlock()

	opt := r.IsEdns0()
	do := opt != nil && opt.Do()
	zone := a.zoneOf(strings.ToLower(q.Name))
	if zone == "" {
		m.Rcode = dns.RcodeRefused
		a.write(w, r, m, opt)
		return
	}
	m.Authoritative = true
	name, qtype := q.Name, q.Qtype
	for hops := 0; ; hops++ {
		rrs, exists, wildcard := a.lookup(name, qtype)
		owner := name
		if wildcard != "" {
			owner = wildcard
		}
		if !exists {
			m.Rcode = dns.RcodeNameError
			break
		}
		if len(rrs) == 0 {
			break // NODATA
		}
		m.Answer = append(m.Answer, a.withSigs(name, owner, rrs, do)...)
		cname, ok := rrs[0].(*dns.CNAME)
		if !ok || qtype == dns.TypeCNAME || hops == 8 {
			break
		}
		name = cname.Target
		if zone = a.zoneOf(strings.ToLower(name)); zone == "" {
			break
		}
	}
	if m.Rcode == dns.RcodeNameError || !hasType(m.Answer, qtype) && !endsInCNAMEOutside(a, m.Answer) {
		soa := dns.Copy(a.zones[zone]).(*dns.SOA)
		soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
		m.Ns = a.withSigs(zone, zone, []dns.RR{soa}, do)
	}
	m.AuthenticatedData = (do || r.AuthenticatedData) && dns.IsSubDomain(a.signed, strings.ToLower(q.Name)) && m.Rcode == dns.RcodeSuccess
	a.write(w, r, m, opt)
}

func hasType(rrs []dns.RR, t uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == t {
			return true
		}
	}
	return false
}

// endsInCNAMEOutside says whether the chain leaves the data this server has
// (then there is no SOA to give).
func endsInCNAMEOutside(a *auth, rrs []dns.RR) bool {
	if len(rrs) == 0 {
		return false
	}
	c, ok := rrs[len(rrs)-1].(*dns.CNAME)
	return ok && a.zoneOf(strings.ToLower(c.Target)) == ""
}

// write answers with an OPT record when the query had one and truncates
// over UDP to the client's buffer, as an authoritative server does.
func (a *auth) write(w dns.ResponseWriter, r, m *dns.Msg, opt *dns.OPT) {
	size := dns.MinMsgSize
	if opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		m.SetEdns0(1232, opt.Do())
	}
	if w.RemoteAddr().Network() == "udp" {
		m.Truncate(size)
	}
	w.WriteMsg(m)
}
