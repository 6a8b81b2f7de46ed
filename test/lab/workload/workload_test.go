package workload

import (
	"reflect"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestExpand(t *testing.T) {
	tests := []struct {
		name string
		want []string
	}{
		{"svc7", []string{"svc7.default.svc.cluster.local."}},
		{"svc7.ns3", []string{"svc7.ns3.default.svc.cluster.local.", "svc7.ns3.svc.cluster.local."}},
		{"api.github.com", []string{
			"api.github.com.default.svc.cluster.local.",
			"api.github.com.svc.cluster.local.",
			"api.github.com.cluster.local.",
			"api.github.com.",
		}},
		{"a.b.c.d.e.f", []string{"a.b.c.d.e.f."}},
	}
	for _, tc := range tests {
		if got := Expand(tc.name); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Expand(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestExpected(t *testing.T) {
	tests := map[string]int{
		"svc7.default.svc.cluster.local.":     dns.RcodeSuccess,
		"svc7.ns3.svc.cluster.local.":         dns.RcodeSuccess,
		"svc7.ns3.default.svc.cluster.local.": dns.RcodeNameError,
		"api1.example.com.cluster.local.":     dns.RcodeNameError,
		"api1.example.com.":                   dns.RcodeSuccess,
	}
	for q, want := range tests {
		if got := Expected(q); got != want {
			t.Errorf("Expected(%q) = %d, want %d", q, got, want)
		}
	}
}

func TestNamesDistinctAndClassed(t *testing.T) {
	for _, c := range []Class{Cluster, External} {
		names := Names(c, 3000, 1)
		seen := map[string]bool{}
		for _, n := range names {
			if seen[n] {
				t.Fatalf("%s: duplicate name %q", c, n)
			}
			seen[n] = true
			last := Expand(n)[len(Expand(n))-1]
			inCluster := dns.IsSubDomain("cluster.local.", last)
			if inCluster != (c == Cluster) || Expected(last) != dns.RcodeSuccess {
				t.Fatalf("%s: name %q ends in %q (rcode %d)", c, n, last, Expected(last))
			}
		}
		if len(seen) != 3000 {
			t.Fatalf("%s: %d names", c, len(seen))
		}
	}
}

func TestSampleIsSkewed(t *testing.T) {
	names := Names(External, 3000, 1)
	qs := Sample(names, 20000, 2)
	counts := map[string]int{}
	for _, q := range qs {
		counts[q]++
	}
	top := counts[dns.Fqdn(names[0])]
	// Zipf(1.1) over 3000 names: the top name is a few percent of lookups,
	// the median name almost never drawn.
	if top < 20000/100 {
		t.Errorf("top name drawn %d times out of 20000 lookups: not skewed", top)
	}
	if c := counts[dns.Fqdn(names[1500])]; c > top/20 {
		t.Errorf("name ranked 1500 drawn %d times, top %d: not skewed", c, top)
	}
	if len(qs) != 4*20000 {
		t.Errorf("external lookups expand to 4 queries each: got %d queries for 20000", len(qs))
	}
}

func TestWriteData(t *testing.T) {
	var b strings.Builder
	if err := WriteData(&b, []string{"a.", "b.c."}); err != nil {
		t.Fatal(err)
	}
	if b.String() != "a. A\nb.c. A\n" {
		t.Errorf("data = %q", b.String())
	}
}
