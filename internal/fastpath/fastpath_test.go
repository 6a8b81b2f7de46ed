package fastpath

import (
	"testing"

	"github.com/miekg/dns"
)

type fakeCache struct{ zone string }

func (f *fakeCache) AnswerWire(query []byte, tcp bool, out []byte) int {
	return copy(out, f.zone)
}

func packQuery(t *testing.T, name string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLowerQName(t *testing.T) {
	var buf [256]byte
	for _, c := range []struct{ in, want string }{
		{"WWW.Example.COM.", "www.example.com."},
		{".", "."},
		{"a.", "a."},
	} {
		n, ok := lowerQName(packQuery(t, c.in), buf[:])
		if !ok || string(buf[:n]) != c.want {
			t.Errorf("lowerQName(%q) = %q, %v; want %q", c.in, buf[:n], ok, c.want)
		}
	}
	// A label with a dot inside, two questions, and garbage go to the chain.
	m := new(dns.Msg)
	m.SetQuestion(`a\.b.example.`, dns.TypeA)
	b, _ := m.Pack()
	if _, ok := lowerQName(b, buf[:]); ok {
		t.Error("escaped dot accepted")
	}
	m.Question = append(m.Question, m.Question[0])
	b, _ = m.Pack()
	if _, ok := lowerQName(b, buf[:]); ok {
		t.Error("two questions accepted")
	}
	for _, junk := range [][]byte{nil, make([]byte, 11), {0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63}} {
		if _, ok := lowerQName(junk, buf[:]); ok {
			t.Errorf("garbage %v accepted", junk)
		}
	}
}

func TestTableMatchesLongestZone(t *testing.T) {
	root, cluster := &fakeCache{"root"}, &fakeCache{"cluster"}
	tab := &Table{zones: map[string]zone{
		".":              {wa: root},
		"cluster.local.": {wa: cluster},
		"probe.local.":   {}, // a block without cache: never fast-path
	}, counter: answers.WithLabelValues("test")}
	out := make([]byte, 64)
	for _, c := range []struct{ name, want string }{
		{"www.example.com.", "root"},
		{"a.b.svc.Cluster.Local.", "cluster"},
		{"cluster.local.", "cluster"},
		{"xcluster.local.", "root"},
		{"health.probe.local.", ""},
	} {
		n := tab.Answer(packQuery(t, c.name), false, out)
		if got := string(out[:n]); got != c.want {
			t.Errorf("%s answered by %q, want %q", c.name, got, c.want)
		}
	}
}

func FuzzLowerQName(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, q []byte) {
		var buf [256]byte
		n, ok := lowerQName(q, buf[:])
		if !ok {
			return
		}
		if n == 0 || buf[n-1] != '.' {
			t.Fatalf("name %q does not end in a dot", buf[:n])
		}
		for _, c := range buf[:n] {
			if 'A' <= c && c <= 'Z' {
				t.Fatalf("upper case left in %q", buf[:n])
			}
		}
	})
}
