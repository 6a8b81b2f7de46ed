package junk

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzClassify checks the classifier on any name: it never panics, splits
// labels as miekg/dns does, ignores case, only ever blames a strict ancestor
// zone, and is closed under RFC 8020 (below junk is junk, above a name that
// may exist is a name that may exist). `go test` runs the seeds; run
// `go test -fuzz FuzzClassify ./plugin/junk` to search.
func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.name)
	}
	j := defaultRules()
	f.Fuzz(func(t *testing.T, s string) {
		j.Classify(s) // anything at all: no panic

		// The rest holds for names a client can send: what unpacking a
		// query off the wire yields.
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(s), dns.TypeA)
		wire, err := q.Pack()
		if err != nil {
			return
		}
		if err := q.Unpack(wire); err != nil {
			t.Fatalf("unpack of packed %q: %v", s, err)
		}
		name := q.Question[0].Name

		var l labels
		if !l.split(name) {
			t.Fatalf("split(%q) failed on a name off the wire", name)
		}
		want := dns.SplitDomainName(name)
		if l.n != len(want) {
			t.Fatalf("split(%q): %d labels, want %d", name, l.n, len(want))
		}
		for i := range want {
			if l.label(i) != want[i] {
				t.Fatalf("split(%q): label %d is %q, want %q", name, i, l.label(i), want[i])
			}
		}

		r := j.Classify(name)
		if u := j.Classify(strings.ToUpper(name)); u != r {
			t.Fatalf("Classify(%q) = %v but Classify of it in upper case = %v", name, r, u)
		}
		if r != nil && (!dns.IsSubDomain(r.Zone, name) || dns.CountLabel(name) <= dns.CountLabel(r.Zone)) {
			t.Fatalf("Classify(%q) blames %s, not a strict ancestor", name, r.Zone)
		}
		if r == nil {
			if off, end := dns.NextLabel(name, 0); !end {
				if p := j.Classify(name[off:]); p != nil {
					t.Fatalf("%q may exist, its parent %q is junk (%s)", name, name[off:], p.metric)
				}
			}
			return
		}
		for _, prefix := range []string{"x", "_tcp", "_zone", "pin", "svc", "pod", "ns"} {
			child := prefix + "." + name
			if _, ok := dns.IsDomainName(child); ok && j.Classify(child) == nil {
				t.Fatalf("%q is junk (%s), its child %q is not", name, r.metric, child)
			}
		}
	})
}
