package junk

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// The rule set of the default profile: AKS's two rules and the schema check.
func defaultRules() *Junk {
	return New([]Rule{
		newRule(MinLabels, "internal.cloudapp.net.", 4),
		newRule(Zone, "reddog.microsoft.com.", 0),
		newRule(Kubernetes, "cluster.local.", 0),
	}, defaultTTL)
}

// classifyCases: name -> the rule's metric label that makes it junk, or ""
// when the name may exist and must go on down the chain.
var classifyCases = []struct {
	name string
	rule string
}{
	// Cluster domain: the apex and the empty non-terminals (RFC 8020).
	{"cluster.local.", ""},
	{"svc.cluster.local.", ""},
	{"pod.cluster.local.", ""},
	{"default.svc.cluster.local.", ""},
	{"default.pod.cluster.local.", ""},
	// Services, endpoints, SRV.
	{"kubernetes.default.svc.cluster.local.", ""},
	{"KUBERNETES.Default.SVC.Cluster.Local.", ""},
	{"kube-dns.kube-system.svc.cluster.local.", ""},
	{"web-0.nginx.default.svc.cluster.local.", ""},
	{"10-244-1-7.nginx.default.svc.cluster.local.", ""},
	{"_https._tcp.kubernetes.default.svc.cluster.local.", ""},
	{"_dns._udp.kube-dns.kube-system.svc.cluster.local.", ""},
	{"_dns-tcp._TCP.kube-dns.kube-system.svc.cluster.local.", ""},
	{"_sip._sctp.pbx.voice.svc.cluster.local.", ""},
	{"http.tcp.web.default.svc.cluster.local.", ""}, // CoreDNS matches port and protocol without underscores
	{"_tcp.web.default.svc.cluster.local.", ""},
	// Zone-scoped names (CoreDNS 1.15 zonal), and their empty non-terminals.
	{"_zone.web.default.svc.cluster.local.", ""},
	{"pin._zone.web.default.svc.cluster.local.", ""},
	{"eastus-1.pin._zone.web.default.svc.cluster.local.", ""},
	{"topology.kubernetes.io.prefer._zone.web.default.svc.cluster.local.", ""},
	// Pods, with the two labels CoreDNS ignores left of the pod IP.
	{"10-244-0-5.default.pod.cluster.local.", ""},
	{"fd00--5.default.pod.cluster.local.", ""},
	{"x.10-244-0-5.default.pod.cluster.local.", ""},
	{"a.b.10-244-0-5.default.pod.cluster.local.", ""},
	// CoreDNS's own names.
	{"dns-version.cluster.local.", ""},
	{"dns.cluster.local.", ""},
	{"ns.dns.cluster.local.", ""},
	// Search-path junk that the schema cannot tell from a real name.
	{"api.github.com.svc.cluster.local.", ""}, // endpoint api of service github in namespace com
	{"github.com.svc.cluster.local.", ""},     // service github in namespace com
	// Not under the cluster domain at all.
	{"mycluster.local.", ""},
	{"a.b.c.d.mycluster.local.", ""},
	{"api.github.com.svc\\.cluster.local.", ""}, // "svc.cluster" is one label
	{"cluster.local.example.com.", ""},
	{"local.", ""},

	// Schema violations: second-level label.
	{"api.github.com.cluster.local.", "kubernetes:cluster.local."},
	{"github.com.cluster.local.", "kubernetes:cluster.local."},
	{"foo.cluster.local.", "kubernetes:cluster.local."},
	{"API.GitHub.COM.Cluster.Local.", "kubernetes:cluster.local."},
	{"_https._tcp.cluster.local.", "kubernetes:cluster.local."},
	{"a\\.svc.cluster.local.", "kubernetes:cluster.local."}, // "a.svc" is one label
	{"x.dns-version.cluster.local.", "kubernetes:cluster.local."},
	{"foo.dns.cluster.local.", "kubernetes:cluster.local."},
	{"x.ns.dns.cluster.local.", "kubernetes:cluster.local."},
	// Schema violations: too many labels before svc.
	{"api.github.com.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"www.example.com.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"API.GitHub.com.Default.SVC.cluster.local.", "kubernetes:cluster.local."},
	{"10-0-0-1.default.pod.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"_foo._bar.web.default.svc.cluster.local.", "kubernetes:cluster.local."}, // no such protocol
	{"a.b.c.web.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"x._https._tcp.web.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"foo._zone.web.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"eastus-1.foo._zone.web.default.svc.cluster.local.", "kubernetes:cluster.local."},
	{"eastus-1.pin.zone.web.default.svc.cluster.local.", "kubernetes:cluster.local."},
	// Schema violations: too many labels before pod.
	{"a.b.c.10-244-0-5.default.pod.cluster.local.", "kubernetes:cluster.local."},
	{"api.github.com.x.10-244-0-5.default.pod.cluster.local.", "kubernetes:cluster.local."},

	// min_labels internal.cloudapp.net 4: a VM name is host.<vnet>.<region>.
	{"internal.cloudapp.net.", ""},
	{"bx.internal.cloudapp.net.", ""},
	{"abc123.bx.internal.cloudapp.net.", ""},
	{"vm1.abc123.bx.internal.cloudapp.net.", ""},
	{"redis.abc123.bx.internal.cloudapp.net.", ""},
	{"a.b.c.d.xinternal.cloudapp.net.", ""},
	{"a.b.c.d.internal.cloudapp.net.evil.", ""},
	{"redis.prod.abc123.bx.internal.cloudapp.net.", "min_labels:internal.cloudapp.net."},
	{"api.github.com.abc123.bx.internal.cloudapp.net.", "min_labels:internal.cloudapp.net."},
	{"API.GitHub.com.ABC123.bx.Internal.CloudApp.Net.", "min_labels:internal.cloudapp.net."},
	{"kubernetes.default.svc.cluster.local.abc123.bx.internal.cloudapp.net.", "min_labels:internal.cloudapp.net."},

	// zone reddog.microsoft.com: all of it but the apex.
	{"reddog.microsoft.com.", ""},
	{"microsoft.com.", ""},
	{"notreddog.microsoft.com.", ""},
	{"foo.reddog.microsoft.com.", "zone:reddog.microsoft.com."},
	{"FOO.RedDog.Microsoft.COM.", "zone:reddog.microsoft.com."},
	{"api.github.com.reddog.microsoft.com.", "zone:reddog.microsoft.com."},

	// Names the rules have no opinion on, and names no client can send.
	{"api.github.com.", ""},
	{".", ""},
	{"", ""},
	{"a..cluster.local.", ""},
}

func TestClassify(t *testing.T) {
	j := defaultRules()
	for _, tc := range classifyCases {
		got := ""
		if r := j.Classify(tc.name); r != nil {
			got = r.metric
		}
		if got != tc.rule {
			t.Errorf("Classify(%q) = %q, want %q", tc.name, got, tc.rule)
		}
	}
}

// TestClassifyRFC8020 checks the table against RFC 8020: every ancestor of a
// name that may exist may exist too (the empty non-terminals), and every
// descendant of a junk name is junk.
func TestClassifyRFC8020(t *testing.T) {
	j := defaultRules()
	for _, tc := range classifyCases {
		if _, ok := dns.IsDomainName(tc.name); !ok || tc.name == "" || strings.Contains(tc.name, "..") {
			continue
		}
		if tc.rule == "" {
			for off, end := 0, false; !end; off, end = dns.NextLabel(tc.name, off) {
				if r := j.Classify(tc.name[off:]); r != nil {
					t.Errorf("%q may exist but its ancestor %q is junk (%s)", tc.name, tc.name[off:], r.metric)
				}
			}
			continue
		}
		for _, prefix := range []string{"x", "_tcp", "pin", "_zone", "svc", "pod", "ns", "dns-version"} {
			child := prefix + "." + tc.name
			if r := j.Classify(child); r == nil {
				t.Errorf("%q is junk but its child %q is not", tc.name, child)
			}
		}
	}
}

// TestClassifySpecificRule: with nested zones the longest zone names the
// answer (and owns the SOA), whatever the order in the Corefile.
func TestClassifySpecificRule(t *testing.T) {
	j := New([]Rule{
		newRule(Kubernetes, "cluster.local", 0),
		newRule(Zone, "corp.cluster.local", 0),
	}, defaultTTL)
	if r := j.Classify("a.corp.cluster.local."); r == nil || r.Zone != "corp.cluster.local." {
		t.Errorf("a.corp.cluster.local.: got rule %+v, want the zone rule for corp.cluster.local.", r)
	}
	if r := j.Classify("a.b.cluster.local."); r == nil || r.Zone != "cluster.local." {
		t.Errorf("a.b.cluster.local.: got rule %+v, want the kubernetes rule", r)
	}
}

func TestLabelsSplit(t *testing.T) {
	for _, name := range []string{
		"a.b.c.", "a.b.c", "a\\.b.c.", "a\\\\.b.", "\\046x.y.", "a\\032b.c.", "x.", "x",
		strings.Repeat("a.", 127),
	} {
		var l labels
		if !l.split(name) {
			t.Errorf("split(%q) failed", name)
			continue
		}
		want := dns.SplitDomainName(name)
		if l.n != len(want) {
			t.Errorf("split(%q): %d labels, want %d", name, l.n, len(want))
			continue
		}
		for i := range want {
			if l.label(i) != want[i] {
				t.Errorf("split(%q): label %d is %q, want %q", name, i, l.label(i), want[i])
			}
		}
	}
	for _, name := range []string{"", "..", "a..b.", ".a.", strings.Repeat("a.", 128), strings.Repeat("a", 1021)} {
		var l labels
		if l.split(name) && name != "" {
			t.Errorf("split(%q) succeeded, want failure", name)
		}
	}
}
