package clientbudget

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want budget
	}{
		{"clientbudget", budget{DefaultRate, DefaultBurst}},
		{"clientbudget 100", budget{100, 500}},
		{"clientbudget 100 7", budget{100, 7}},
		{"clientbudget 0", budget{0, 0}},
		{"clientbudget 0.5 1", budget{0.5, 1}},
	} {
		got, err := parse(caddy.NewTestController("dns", c.in))
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, err string }{
		{"clientbudget -1", "not a number of queries a second"},
		{"clientbudget NaN", "not a number of queries a second"},
		{"clientbudget fast", "not a number of queries a second"},
		{"clientbudget 10 0", "not a query count"},
		{"clientbudget 10 1.5", "not a query count"},
		{"clientbudget 1 2 3", "Wrong argument count"},
		{"clientbudget 10 {\n per_zone\n}", "unknown property"},
		{"clientbudget\nclientbudget", "this plugin"},
	} {
		_, err := parse(caddy.NewTestController("dns", c.in))
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%q: error %v, want one containing %q", c.in, err, c.err)
		}
	}
}

func TestSetupRejectsDifferentBudgetsInOneInstance(t *testing.T) {
	c := caddy.NewTestController("dns", "clientbudget 100 10")
	if err := setup(c); err != nil {
		t.Fatal(err)
	}
	c.ServerBlockKeys = []string{"cluster.local.:53"}
	c2 := caddy.NewTestController("dns", "clientbudget 200 10")
	c2.Set(instanceKey{}, c.Get(instanceKey{}))
	if err := setup(c2); err == nil || !strings.Contains(err.Error(), "process-wide") {
		t.Fatalf("a second block with another budget: %v", err)
	}
}
