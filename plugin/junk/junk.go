// Package junk implements the junk plugin: it answers names that cannot
// exist, the junk a pod's search path (ndots:5) makes of every external name,
// locally with NXDOMAIN and an SOA, and passes everything else on.
//
// With ndots:5 a pod resolving api.github.com first asks for
// api.github.com.default.svc.cluster.local, api.github.com.svc.cluster.local,
// api.github.com.cluster.local and api.github.com.<vnet>.internal.cloudapp.net.
// Most of those can be known not to exist from their shape alone. AKS LocalDNS
// answers two such shapes with the stock template plugin; we have our own
// plugin because template
//
//   - answers without an SOA in the authority section, so by RFC 2308 no
//     client or cache downstream may store the negative answer, and the pod
//     asks again on its next lookup (an SOA can be hand-written into each
//     template rule, AKS does not);
//   - has no counter per rule: coredns_template_matches_total is keyed by
//     zone, class and query type, so rules sharing a zone are one number;
//   - cannot express the Kubernetes DNS schema check (see schema.go), which
//     is a walk over labels, not a regular expression;
//   - runs a regular expression per query where a label walk over the name,
//     without allocating, does (BenchmarkClassify against the AKS regex).
//
// Junk only ever answers names that the server owning them answers NXDOMAIN
// as well, so it changes where the answer comes from and that it can be
// cached, never what it says. Every rule is closed under RFC 8020: when a
// name is junk, so is every name below it, and the apex of a rule is never
// junk.
package junk

import (
	"context"
	"sort"
	"strconv"
	"strings"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

const pluginName = "junk"

// Kind is what a rule checks of the labels left of its zone.
type Kind int

// The rules of the Corefile syntax.
const (
	// MinLabels: junk when at least Min labels come before the zone
	// (`min_labels ZONE N`).
	MinLabels Kind = iota
	// Zone: junk when any label comes before the zone (`zone ZONE`).
	Zone
	// Kubernetes: junk when the name breaks the Kubernetes DNS schema of the
	// cluster domain ZONE (`kubernetes ZONE`).
	Kubernetes
)

func (k Kind) String() string {
	switch k {
	case MinLabels:
		return "min_labels"
	case Zone:
		return "zone"
	case Kubernetes:
		return "kubernetes"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Rule is one line of the junk block.
type Rule struct {
	Kind Kind
	// Zone is the suffix the rule applies to, lower case and fully
	// qualified. The synthesized SOA is owned by it.
	Zone string
	// Min is the label count for MinLabels.
	Min int

	labels []string // Zone's labels, left to right
	metric string   // the rule label of the answers counter
}

func newRule(kind Kind, zone string, minimum int) Rule {
	zone = strings.ToLower(dns.Fqdn(zone))
	r := Rule{Kind: kind, Zone: zone, Min: minimum, labels: dns.SplitDomainName(zone)}
	r.metric = kind.String() + ":" + zone
	return r
}

// junk reports whether a name with before labels left of the rule's zone is
// junk under this rule.
func (r *Rule) junk(l *labels, before int) bool {
	switch r.Kind {
	case MinLabels:
		return before >= r.Min
	case Zone:
		return before > 0
	case Kubernetes:
		return kubernetesJunk(l, before)
	}
	return false
}

// Junk is the plugin handler.
type Junk struct {
	Next plugin.Handler
	// Rules, longest zone first so the most specific rule names the answer.
	Rules []Rule
	// TTL of the SOA and its MINIMUM field: how long a client may cache the
	// NXDOMAIN (RFC 2308 takes the smaller of the two).
	TTL uint32
}

// New returns a Junk with rules ordered most specific first.
func New(rules []Rule, ttl uint32) *Junk {
	rules = append([]Rule(nil), rules...)
	sort.SliceStable(rules, func(i, j int) bool { return len(rules[i].labels) > len(rules[j].labels) })
	return &Junk{Rules: rules, TTL: ttl}
}

// Classify returns the rule that makes name junk, or nil when the name may
// exist and must be resolved.
func (j *Junk) Classify(name string) *Rule {
	var l labels
	if !l.split(name) {
		return nil // not a name a client can send: not ours to judge
	}
	for i := range j.Rules {
		r := &j.Rules[i]
		if before, ok := l.under(r.labels); ok && r.junk(&l, before) {
			return r
		}
	}
	return nil
}

// ServeDNS implements plugin.Handler.
func (j *Junk) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 || r.Question[0].Qclass != dns.ClassINET {
		return plugin.NextOrFailure(pluginName, j.Next, ctx, w, r)
	}
	rule := j.Classify(r.Question[0].Name)
	if rule == nil {
		return plugin.NextOrFailure(pluginName, j.Next, ctx, w, r)
	}

	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeNameError) // echoes the question as asked
	m.Authoritative = true
	m.RecursionAvailable = true
	m.Ns = []dns.RR{j.soa(rule.Zone)}
	state := request.Request{W: w, Req: r}
	state.SizeAndDo(m)
	// Count first: once the client has the answer, the counter shows it.
	answersCount.WithLabelValues(metrics.WithServer(ctx), rule.metric).Inc()
	w.WriteMsg(m)
	return dns.RcodeNameError, nil
}

// Fixed SOA fields. Nothing transfers or refreshes a synthesized zone; the
// values are CoreDNS's own (plugin/kubernetes, plugin/file) so the record
// looks familiar, and MNAME names us under .invalid (RFC 6761) so an operator
// reading `dig` output sees the answer was made up on this node.
const (
	soaMname   = "localdns.invalid."
	soaRname   = "hostmaster.localdns.invalid."
	soaSerial  = 1
	soaRefresh = 7200
	soaRetry   = 1800
	soaExpire  = 86400
)

func (j *Junk) soa(zone string) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: j.TTL},
		Ns:      soaMname,
		Mbox:    soaRname,
		Serial:  soaSerial,
		Refresh: soaRefresh,
		Retry:   soaRetry,
		Expire:  soaExpire,
		Minttl:  j.TTL,
	}
}

// Name implements plugin.Handler.
func (j *Junk) Name() string { return pluginName }
