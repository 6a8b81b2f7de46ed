package guard

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	// Stock CoreDNS 1.15, in this test process, with its own directive
	// order: this package does not import internal/plugins.
	_ "github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/nsid"
	_ "github.com/coredns/coredns/plugin/template"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

// stockBlock is one server block of AKS LocalDNS's Corefile (AgentBaker's
// localdns template, protocol PreferUDP, serveStale Immediate, the default
// 3600 s), as stock CoreDNS runs it on a node; only the addresses differ.
const stockBlock = `%[1]s:%[2]d {
    errors
    bind %[3]s
    forward . %[4]s {
        prefer_udp
        policy sequential
        max_concurrent 1000
    }
    cache 3600 {
        success 9984
        denial 9984
        serve_stale 3600s immediate
        servfail 0
    }
    loop
    nsid %[5]s
    prometheus 127.0.0.1:%[6]d
%[7]s}
`

// stockJunk is the template pair AKS renders into each root block.
const stockJunk = `    template ANY ANY internal.cloudapp.net {
        match "^(?:[^.]+\.){4,}internal\.cloudapp\.net\.$"
        rcode NXDOMAIN
        fallthrough
    }
    template ANY ANY reddog.microsoft.com {
        rcode NXDOMAIN
    }
`

// stockCorefile renders AKS's blocks for both listeners: vnetDNSOverrides
// "." and cluster.local on the node listener, kubeDNSOverrides "." and
// cluster.local on the cluster listener, every one forwarding to upstream.
func stockCorefile(port, metrics int, nodeIP, podsIP, upstream string) string {
	var b strings.Builder
	for _, l := range []struct{ ip, nsid string }{{nodeIP, "localdns"}, {podsIP, "localdns-pod"}} {
		fmt.Fprintf(&b, stockBlock, ".", port, l.ip, upstream, l.nsid, metrics, stockJunk)
		fmt.Fprintf(&b, stockBlock, "cluster.local", port, l.ip, upstream, l.nsid, metrics, "")
	}
	return b.String()
}

// dcase is one query of the differential test.
type dcase struct {
	name     string
	qtype    uint16
	net      string // udp or tcp
	edns     uint16 // EDNS0 buffer size; 0: no OPT record
	do, cd   bool
	nsid     bool
	intended *intended // where localdns's answer may differ from stock's, or nil
}

// intended is a documented, intended difference between localdns and stock
// CoreDNS: the parts of the answer it excuses, and why. Everything else
// is still compared.
type intended struct {
	parts []string // of "authority", "ra", "answer" (with TC), "do"
	why   string
	// check verifies localdns's side of the excused parts: what it does
	// instead must still be right.
	check func(stock, local *dns.Msg) error
}

// The intended differences. Keep this list short: each entry is a place
// where localdns is deliberately not what AKS LocalDNS is today.
var (
	// junk (plugin/junk/README.md) answers junk search-path names as the
	// recursive service it is: RA set, and an SOA in the authority section
	// so that clients may cache the NXDOMAIN (RFC 2308). AKS's template
	// answers without RA and without an SOA, so nothing may cache it.
	junkAnswer = &intended{[]string{"authority", "ra"}, "junk NXDOMAIN has RA and an SOA (RFC 2308); AKS's template neither",
		func(_, l *dns.Msg) error {
			if len(l.Ns) != 1 || l.Ns[0].Header().Rrtype != dns.TypeSOA || !l.RecursionAvailable {
				return fmt.Errorf("want RA and one SOA in the authority section")
			}
			return nil
		}}
	// localdns caps UDP answers at 1232 bytes (DNS Flag Day 2020) whatever
	// buffer the client claims; stock CoreDNS honours a claimed 65535 and
	// sends a datagram that IP must fragment.
	udpCap = &intended{[]string{"answer"}, "UDP answers capped at 1232 bytes; stock honours a claimed 65535",
		func(s, l *dns.Msg) error {
			c := l.Copy()
			c.Compress = true // as it came off the wire (Unpack leaves Compress off)
			wire, err := c.Pack()
			if err != nil {
				return err
			}
			onlyL, _ := setDiff(records(l.Answer), records(s.Answer))
			if !l.Truncated || len(wire) > 1232 || len(onlyL) > 0 || len(l.Answer) == 0 {
				return fmt.Errorf("want TC, at most 1232 bytes and some of stock's records; got TC=%v, %d bytes, %d records, %d not from stock",
					l.Truncated, len(wire), len(l.Answer), len(onlyL))
			}
			return nil
		}}
	// Stock's nsid plugin adds its OPT record with DO=1 whatever the query
	// said (plugin/nsid: SetEdns0(size, true)); RFC 3225 section 3 has the
	// query's DO bit copied into the answer, as localdns does.
	nsidDO = &intended{[]string{"do"}, "stock nsid sets DO in answers to DO=0 queries (RFC 3225 3: copy the query's)",
		func(_, l *dns.Msg) error {
			if o := l.IsEdns0(); o == nil || o.Do() {
				return fmt.Errorf("want an OPT record with DO=0, as in the query")
			}
			return nil
		}}
)

func differentialCases() []dcase {
	var cs []dcase
	add := func(c dcase) { cs = append(cs, c) }
	udp := func(name string, qtype uint16) dcase { return dcase{name: name, qtype: qtype, net: "udp"} }
	edns := func(c dcase, size uint16) dcase { c.edns = size; return c }

	add(udp("www.diff.test.", dns.TypeA))
	add(udp("www.diff.test.", dns.TypeAAAA))
	add(edns(udp("alias.diff.test.", dns.TypeA), 1232)) // CNAME chain, 3 hops
	add(udp("alias.diff.test.", dns.TypeCNAME))         // the CNAME itself
	add(udp("tocluster.diff.test.", dns.TypeA))         // chain into cluster.local
	add(udp("dangling.diff.test.", dns.TypeA))          // CNAME to NXDOMAIN
	add(udp("diff.test.", dns.TypeMX))                  // MX at the apex
	add(udp("txt.diff.test.", dns.TypeTXT))             // multi-string TXT
	add(udp("_sip._tcp.diff.test.", dns.TypeSRV))       // SRV
	add(udp("anything.wild.diff.test.", dns.TypeA))     // wildcard
	add(udp("a.b.wild.diff.test.", dns.TypeTXT))        // wildcard, deeper
	add(udp("nosuch.diff.test.", dns.TypeA))            // NXDOMAIN + SOA
	add(udp("www.diff.test.", dns.TypeMX))              // NODATA + SOA
	add(udp("ent.diff.test.", dns.TypeA))               // empty non-terminal: NODATA
	add(udp("highttl.diff.test.", dns.TypeA))           // TTL >= 2^31
	add(udp("MiXeDcAsE.DiFf.TeSt.", dns.TypeA))         // 0x20: the question echoed as sent
	add(udp("10.0.0.10.in-addr.arpa.", dns.TypePTR))    // PTR
	add(udp("kube-dns.kube-system.svc.cluster.local.", dns.TypeA))
	add(udp("_dns._udp.kube-dns.kube-system.svc.cluster.local.", dns.TypeSRV))
	add(udp("web.default.svc.cluster.local.", dns.TypeA))
	add(udp("nosuch.default.svc.cluster.local.", dns.TypeA))
	add(udp("vm1.internal.cloudapp.net.", dns.TypeA))
	add(udp("b.c.vm1.internal.cloudapp.net.", dns.TypeA)) // 3 labels: not junk, NXDOMAIN upstream
	add(dcase{name: "a.b.c.vm1.internal.cloudapp.net.", qtype: dns.TypeA, net: "udp", intended: junkAnswer})
	add(dcase{name: "x.reddog.microsoft.com.", qtype: dns.TypeA, net: "udp", intended: junkAnswer})
	add(dcase{name: "www-tcp.diff.test.", qtype: dns.TypeA, net: "tcp"})
	add(dcase{name: "secure.diff.test.", qtype: dns.TypeA, net: "udp", edns: 1232, do: true})              // RRSIG, AD
	add(dcase{name: "secure-cd.diff.test.", qtype: dns.TypeA, net: "udp", edns: 1232, do: true, cd: true}) // CD
	add(dcase{name: "nosuch-do.diff.test.", qtype: dns.TypeA, net: "udp", edns: 1232, do: true})           // signed denial
	add(dcase{name: "nsid.diff.test.", qtype: dns.TypeA, net: "udp", edns: 1232, nsid: true, intended: nsidDO})

	// Big answers: 40 A (about 700 bytes), 30 AAAA (about 900 bytes), over
	// UDP without EDNS0 (512), at 1232, with a claimed 65535, and over TCP.
	for _, big := range []struct {
		name  string
		qtype uint16
	}{{big40Name, dns.TypeA}, {big30Name, dns.TypeAAAA}} {
		add(udp(big.name, big.qtype))
		add(edns(udp(big.name, big.qtype), 1232))
		add(edns(udp(big.name, big.qtype), 65535))
		add(dcase{name: big.name, qtype: big.qtype, net: "tcp"})
	}
	// 120 AAAA (about 3.4 kB): more than 1232 bytes.
	add(edns(udp(big120Name, dns.TypeAAAA), 1232))
	add(dcase{name: big120Name, qtype: dns.TypeAAAA, net: "udp", edns: 65535, intended: udpCap})
	add(dcase{name: big120Name, qtype: dns.TypeAAAA, net: "tcp", edns: 65535})
	return cs
}

func (c dcase) String() string {
	s := fmt.Sprintf("%s %s over %s", c.name, dns.TypeToString[c.qtype], c.net)
	if c.edns > 0 {
		s += fmt.Sprintf(" edns=%d", c.edns)
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{c.do, "DO"}, {c.cd, "CD"}, {c.nsid, "NSID"}} {
		if f.on {
			s += " +" + f.name
		}
	}
	return s
}

func (c dcase) msg() *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(c.name, c.qtype)
	m.CheckingDisabled = c.cd
	if c.edns > 0 {
		m.SetEdns0(c.edns, c.do)
		if c.nsid {
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		}
	}
	return m
}

func exchange(c dcase, addr string) (*dns.Msg, error) {
	q := c.msg()
	cl := &dns.Client{Net: c.net, Timeout: 3 * time.Second, UDPSize: dns.MaxMsgSize}
	r, _, err := cl.Exchange(q, addr)
	if err != nil {
		return nil, err
	}
	if r.Id != q.Id || !r.Response {
		return nil, fmt.Errorf("answer has ID %d (query %d), QR=%v", r.Id, q.Id, r.Response)
	}
	return r, nil
}

// TestDifferential sends every case through stock CoreDNS and localdns,
// on both listeners, cold and then warm, and compares the answers.
func TestDifferential(t *testing.T) {
	a := startAuth(t)

	const stockNode, stockPods = "127.0.43.1", "127.0.43.2"
	sp := testbin.FreePorts(t, 2, stockNode, stockPods, "127.0.0.1")
	stock := testdns.StartCoreDNS(t, stockCorefile(sp[0], sp[1], stockNode, stockPods, a.addr))
	defer testdns.StopCoreDNS(t, stock)
	stockL := map[string]string{"node": fmt.Sprintf("%s:%d", stockNode, sp[0]), "pods": fmt.Sprintf("%s:%d", stockPods, sp[0])}

	d := startLocaldns(t, "127.0.44.1", "127.0.44.2", a.addr, "", "")
	localL := map[string]string{"node": d.node, "pods": d.pods}

	cases := differentialCases()
	for _, listener := range []string{"node", "pods"} {
		for _, c := range cases {
			t.Run(listener+"/"+c.String(), func(t *testing.T) {
				// Warm too: the second query must come from the cache in
				// both or in neither.
				for _, phase := range []string{"cold", "warm"} {
					before := a.Count(c.name, c.qtype)
					s, err := exchange(c, stockL[listener])
					if err != nil {
						t.Fatalf("%s stock: %v", phase, err)
					}
					stockAsked := a.Count(c.name, c.qtype) - before

					before = a.Count(c.name, c.qtype)
					l, err := exchange(c, localL[listener])
					if err != nil {
						t.Fatalf("%s localdns: %v", phase, err)
					}
					localAsked := a.Count(c.name, c.qtype) - before

					for _, diff := range compare(c, s, l) {
						t.Errorf("%s: %s\nstock:\n%v\nlocaldns:\n%v", phase, diff, s, l)
					}
					if c.intended != nil {
						if err := c.intended.check(s, l); err != nil {
							t.Errorf("%s: intended difference (%s): localdns: %v\n%v", phase, c.intended.why, err, l)
						}
					}
					if phase == "warm" && (stockAsked == 0) != (localAsked == 0) {
						t.Errorf("warm: stock asked the upstream %d times, localdns %d times", stockAsked, localAsked)
					}
					checkTTLs(t, "stock "+phase, s, false)
					checkTTLs(t, "localdns "+phase, l, true)
				}
			})
		}
	}
}

// compare returns every difference between the stock and the localdns
// answer to c that c's intended difference does not cover.
func compare(c dcase, s, l *dns.Msg) []string {
	var diffs []string
	differ := func(what string, sv, lv any) {
		if fmt.Sprint(sv) != fmt.Sprint(lv) {
			diffs = append(diffs, fmt.Sprintf("%s: stock %v, localdns %v", what, sv, lv))
		}
	}
	section := func(what string, sv, lv []dns.RR) {
		onlyS, onlyL := setDiff(records(sv), records(lv))
		if len(onlyS)+len(onlyL) > 0 {
			diffs = append(diffs, fmt.Sprintf("%s: %d records from stock, %d from localdns; only from stock: %s; only from localdns: %s",
				what, len(sv), len(lv), abbrev(onlyS), abbrev(onlyL)))
		}
	}
	differ("rcode", dns.RcodeToString[s.Rcode], dns.RcodeToString[l.Rcode])
	differ("opcode", s.Opcode, l.Opcode)
	flags := func(m *dns.Msg) string {
		var f []string
		for _, b := range []struct {
			on   bool
			name string
		}{{m.Authoritative, "aa"}, {m.Truncated && !c.excuses("answer"), "tc"}, {m.RecursionDesired, "rd"},
			{m.RecursionAvailable && !c.excuses("ra"), "ra"}, {m.AuthenticatedData, "ad"}, {m.CheckingDisabled, "cd"}} {
			if b.on {
				f = append(f, b.name)
			}
		}
		return strings.Join(f, " ")
	}
	differ("flags", flags(s), flags(l))
	differ("question", s.Question, l.Question)
	if !c.excuses("answer") {
		section("answer", s.Answer, l.Answer)
	}
	if !c.excuses("authority") {
		section("authority", s.Ns, l.Ns)
	}
	section("additional", s.Extra, l.Extra)
	differ("EDNS0", ednsSummary(s, c.excuses("do")), ednsSummary(l, c.excuses("do")))
	return diffs
}

func (c dcase) excuses(part string) bool {
	return c.intended != nil && slices.Contains(c.intended.parts, part)
}

// records renders a section without TTLs and without OPT, sorted, so that
// it compares as a multiset.
func records(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		c := dns.Copy(rr)
		c.Header().Ttl = 0
		out = append(out, c.String())
	}
	slices.Sort(out)
	return out
}

// setDiff returns what only a has and what only b has (both sorted).
func setDiff(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

// abbrev shows at most three records and how many more there are.
func abbrev(rrs []string) string {
	if len(rrs) <= 3 {
		return "[" + strings.Join(rrs, "; ") + "]"
	}
	return fmt.Sprintf("[%s; and %d more]", strings.Join(rrs[:3], "; "), len(rrs)-3)
}

// ednsSummary is what matters of the OPT record: there or not, version,
// DO, and the options (NSID with its content; the others by code).
func ednsSummary(m *dns.Msg, ignoreDO bool) string {
	o := m.IsEdns0()
	if o == nil {
		return "none"
	}
	s := fmt.Sprintf("version=%d", o.Version())
	if !ignoreDO {
		s += fmt.Sprintf(" do=%v", o.Do())
	}
	for _, opt := range o.Option {
		if n, ok := opt.(*dns.EDNS0_NSID); ok {
			s += " nsid=" + n.Nsid
			continue
		}
		s += fmt.Sprintf(" option=%d", opt.Option())
	}
	return s
}

// checkTTLs: no TTL above what the authoritative server gave, nor above
// the 3600 s both caches are configured with. localdns reads a TTL of 2^31
// or more as 0 (RFC 2181 section 8), so it may give at most its 5 s floor
// for highttl.diff.test; stock caps it at 3600.
func checkTTLs(t *testing.T, who string, m *dns.Msg, localdns bool) {
	t.Helper()
	for _, rr := range append(append(slices.Clone(m.Answer), m.Ns...), m.Extra...) {
		h := rr.Header()
		if h.Rrtype == dns.TypeOPT {
			continue
		}
		limit := uint32(3600)
		if strings.EqualFold(h.Name, "highttl.diff.test.") {
			if localdns {
				limit = 5
			}
		} else if strings.HasSuffix(strings.ToLower(h.Name), "cluster.local.") || strings.HasSuffix(h.Name, "in-addr.arpa.") {
			limit = 30
		} else if h.Rrtype != dns.TypeSOA {
			limit = 300
		}
		if h.Ttl > limit {
			t.Errorf("%s: TTL %d above %d in %v", who, h.Ttl, limit, rr)
		}
	}
}
