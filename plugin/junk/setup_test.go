package junk

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

func TestSetup(t *testing.T) {
	for _, tc := range []struct {
		input string
		rules []string // metric labels, in matching order
		min   int      // Min of the min_labels rule, when there is one
		ttl   uint32
	}{
		{
			input: `junk {
				min_labels internal.cloudapp.net 4
				zone reddog.microsoft.com
				kubernetes cluster.local
				ttl 60
			}`,
			rules: []string{"min_labels:internal.cloudapp.net.", "zone:reddog.microsoft.com.", "kubernetes:cluster.local."},
			min:   4,
			ttl:   60,
		},
		{
			input: "junk {\n zone reddog.microsoft.com\n}",
			rules: []string{"zone:reddog.microsoft.com."},
			ttl:   defaultTTL,
		},
		{
			input: "junk {\n zone A.example. b.example\n kubernetes Cluster.Local.\n ttl 0\n}",
			rules: []string{"zone:a.example.", "zone:b.example.", "kubernetes:cluster.local."},
			ttl:   0,
		},
		{
			input: "junk {\n kubernetes cluster.local\n zone x.corp.cluster.local\n ttl 86400\n}",
			rules: []string{"zone:x.corp.cluster.local.", "kubernetes:cluster.local."},
			ttl:   86400,
		},
		{
			input: "junk {\n min_labels internal.cloudapp.net. 1\n}",
			rules: []string{"min_labels:internal.cloudapp.net."},
			min:   1,
			ttl:   defaultTTL,
		},
	} {
		c := caddy.NewTestController("dns", tc.input)
		j, err := parse(c)
		if err != nil {
			t.Errorf("parse(%q): %v", tc.input, err)
			continue
		}
		var got []string
		for _, r := range j.Rules {
			got = append(got, r.metric)
			if r.Kind == MinLabels && r.Min != tc.min {
				t.Errorf("parse(%q): min_labels %d, want %d", tc.input, r.Min, tc.min)
			}
		}
		if strings.Join(got, " ") != strings.Join(tc.rules, " ") {
			t.Errorf("parse(%q): rules %v, want %v", tc.input, got, tc.rules)
		}
		if j.TTL != tc.ttl {
			t.Errorf("parse(%q): ttl %d, want %d", tc.input, j.TTL, tc.ttl)
		}
		if err := setup(caddy.NewTestController("dns", tc.input)); err != nil {
			t.Errorf("setup(%q): %v", tc.input, err)
		}
	}
}

func TestSetupErrors(t *testing.T) {
	for _, tc := range []struct {
		input string
		err   string
	}{
		{"junk", "no rules"},
		{"junk {\n}", "no rules"},
		{"junk {\n ttl 30\n}", "no rules"},
		{"junk internal.cloudapp.net", "Wrong argument count"},
		{"junk {\n zone\n}", "Wrong argument count"},
		{"junk {\n kubernetes\n}", "Wrong argument count"},
		{"junk {\n min_labels internal.cloudapp.net\n}", "Wrong argument count"},
		{"junk {\n min_labels internal.cloudapp.net 4 5\n}", "Wrong argument count"},
		{"junk {\n min_labels internal.cloudapp.net four\n}", "not a label count"},
		{"junk {\n min_labels internal.cloudapp.net 0\n}", "not a label count"},
		{"junk {\n min_labels internal.cloudapp.net -1\n}", "not a label count"},
		{"junk {\n min_labels internal.cloudapp.net 127\n}", "not a label count"},
		{"junk {\n zone .\n}", "root zone"},
		{"junk {\n kubernetes .\n}", "root zone"},
		{"junk {\n min_labels . 4\n}", "root zone"},
		{"junk {\n zone a..b\n}", "not a domain name"},
		{"junk {\n zone a\\.b.example\n}", "not a domain name"},
		{"junk {\n zone " + strings.Repeat("a", 64) + ".example\n}", "not a domain name"},
		{"junk {\n zone reddog.microsoft.com\n zone REDDOG.microsoft.com.\n}", "already has a zone rule"},
		{"junk {\n kubernetes cluster.local\n min_labels cluster.local 4\n}", "already has a kubernetes rule"},
		{"junk {\n zone a.example\n ttl\n}", "Wrong argument count"},
		{"junk {\n zone a.example\n ttl 1 2\n}", "Wrong argument count"},
		{"junk {\n zone a.example\n ttl 60s\n}", "not a number of seconds"},
		{"junk {\n zone a.example\n ttl -1\n}", "not a number of seconds"},
		{"junk {\n zone a.example\n ttl 86401\n}", "not a number of seconds"},
		{"junk {\n zone a.example\n ttl 30\n ttl 60\n}", "ttl given twice"},
		{"junk {\n zone a.example\n fallthrough\n}", `unknown property "fallthrough"`},
		{"junk {\n zone a.example\n}\njunk {\n zone b.example\n}", "only be used once"},
	} {
		_, err := parse(caddy.NewTestController("dns", tc.input))
		if err == nil {
			t.Errorf("parse(%q): no error, want %q", tc.input, tc.err)
			continue
		}
		if !strings.Contains(err.Error(), tc.err) {
			t.Errorf("parse(%q): error %q, want it to contain %q", tc.input, err, tc.err)
		}
		if err := setup(caddy.NewTestController("dns", tc.input)); err == nil || !strings.HasPrefix(err.Error(), "plugin/junk: ") {
			t.Errorf("setup(%q): error %v, want one prefixed plugin/junk", tc.input, err)
		}
	}
}
