package junk

import (
	"context"
	"regexp"
	"testing"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
)

// nextCounter is the next plugin: it counts the queries it gets and answers
// NOERROR, as a forwarder would.
type nextCounter struct{ calls int }

func (n *nextCounter) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	n.calls++
	m := new(dns.Msg)
	m.SetReply(r)
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

func (n *nextCounter) Name() string { return "next" }

func counterValue(t *testing.T, server, rule string) float64 {
	t.Helper()
	var m dto.Metric
	if err := answersCount.WithLabelValues(server, rule).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestServeJunk(t *testing.T) {
	j := New([]Rule{
		newRule(MinLabels, "internal.cloudapp.net.", 4),
		newRule(Zone, "reddog.microsoft.com.", 0),
		newRule(Kubernetes, "cluster.local.", 0),
	}, 45)
	next := &nextCounter{}
	j.Next = next

	for _, tc := range []struct {
		qname string
		qtype uint16
		zone  string
		rule  string
	}{
		{"api.github.com.default.svc.cluster.local.", dns.TypeA, "cluster.local.", "kubernetes:cluster.local."},
		{"API.GitHub.com.Cluster.Local.", dns.TypeAAAA, "cluster.local.", "kubernetes:cluster.local."},
		{"api.github.com.abc.bx.internal.cloudapp.net.", dns.TypeHTTPS, "internal.cloudapp.net.", "min_labels:internal.cloudapp.net."},
		{"Foo.RedDog.Microsoft.com.", dns.TypeSRV, "reddog.microsoft.com.", "zone:reddog.microsoft.com."},
		{"x.reddog.microsoft.com.", dns.TypeANY, "reddog.microsoft.com.", "zone:reddog.microsoft.com."},
	} {
		for _, edns := range []bool{false, true} {
			before := counterValue(t, "", tc.rule)
			r := new(dns.Msg)
			r.SetQuestion(tc.qname, tc.qtype)
			r.Id = 4242
			r.CheckingDisabled = true
			if edns {
				r.SetEdns0(1232, true)
			}
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			rcode, err := j.ServeDNS(context.Background(), rec, r)
			if err != nil || rcode != dns.RcodeNameError {
				t.Fatalf("%s: ServeDNS = %d, %v; want NXDOMAIN, nil", tc.qname, rcode, err)
			}
			m := rec.Msg
			if m == nil {
				t.Fatalf("%s: nothing written", tc.qname)
			}
			if m.Rcode != dns.RcodeNameError || !m.Response || !m.Authoritative || !m.RecursionAvailable ||
				!m.RecursionDesired || !m.CheckingDisabled || m.Id != 4242 {
				t.Errorf("%s: header %+v", tc.qname, m.MsgHdr)
			}
			if len(m.Question) != 1 || m.Question[0] != r.Question[0] {
				t.Errorf("%s: question %v, want %v as asked", tc.qname, m.Question, r.Question)
			}
			if len(m.Answer) != 0 || len(m.Ns) != 1 {
				t.Fatalf("%s: answer %v, authority %v; want only an SOA", tc.qname, m.Answer, m.Ns)
			}
			soa, ok := m.Ns[0].(*dns.SOA)
			if !ok {
				t.Fatalf("%s: authority %v is not an SOA", tc.qname, m.Ns[0])
			}
			want := tc.zone + "\t45\tIN\tSOA\tlocaldns.invalid. hostmaster.localdns.invalid. 1 7200 1800 86400 45"
			if soa.String() != want {
				t.Errorf("%s: SOA\n%s\nwant\n%s", tc.qname, soa, want)
			}
			opt := m.IsEdns0()
			switch {
			case edns && opt == nil:
				t.Errorf("%s: request had EDNS0, reply has no OPT", tc.qname)
			case edns && (opt.UDPSize() != 1232 || !opt.Do()):
				t.Errorf("%s: OPT %v, want size 1232 and DO", tc.qname, opt)
			case !edns && opt != nil:
				t.Errorf("%s: request had no EDNS0, reply has OPT %v", tc.qname, opt)
			}
			if got := counterValue(t, "", tc.rule) - before; got != 1 {
				t.Errorf("%s: counter for %s moved by %v, want 1", tc.qname, tc.rule, got)
			}
		}
	}
	if next.calls != 0 {
		t.Errorf("junk names reached the next plugin %d times", next.calls)
	}
}

func TestServePassesOn(t *testing.T) {
	j := New([]Rule{
		newRule(MinLabels, "internal.cloudapp.net.", 4),
		newRule(Zone, "reddog.microsoft.com.", 0),
		newRule(Kubernetes, "cluster.local.", 0),
	}, defaultTTL)
	next := &nextCounter{}
	j.Next = next

	queries := []*dns.Msg{}
	for _, name := range []string{
		"kubernetes.default.svc.cluster.local.",
		"svc.cluster.local.",
		"cluster.local.",
		"vm1.abc.bx.internal.cloudapp.net.",
		"reddog.microsoft.com.",
		"api.github.com.",
	} {
		r := new(dns.Msg)
		r.SetQuestion(name, dns.TypeA)
		queries = append(queries, r)
	}
	// Junk names that are not a plain IN query are not ours either.
	chaos := new(dns.Msg)
	chaos.SetQuestion("api.github.com.cluster.local.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	notify := new(dns.Msg)
	notify.SetNotify("x.reddog.microsoft.com.")
	twoQuestions := new(dns.Msg)
	twoQuestions.SetQuestion("x.reddog.microsoft.com.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, twoQuestions.Question[0])
	queries = append(queries, chaos, notify, twoQuestions)

	for i, r := range queries {
		rec := dnstest.NewRecorder(&test.ResponseWriter{})
		rcode, err := j.ServeDNS(context.Background(), rec, r)
		if err != nil || rcode != dns.RcodeSuccess || rec.Msg == nil || rec.Msg.Rcode != dns.RcodeSuccess {
			t.Errorf("%v: ServeDNS = %d, %v; want the next plugin's NOERROR", r.Question, rcode, err)
		}
		if next.calls != i+1 {
			t.Fatalf("%v: next plugin called %d times, want %d", r.Question, next.calls, i+1)
		}
	}
}

// The AKS rule, as template runs it: one regular expression per query.
var aksRegexp = regexp.MustCompile(`^(?:[^.]+\.){4,}internal\.cloudapp\.net\.$`)

var benchNames = []string{
	"api.github.com.default.svc.cluster.local.",
	"api.github.com.svc.cluster.local.",
	"api.github.com.cluster.local.",
	"api.github.com.abc123.bx.internal.cloudapp.net.",
	"api.github.com.",
	"kubernetes.default.svc.cluster.local.",
}

func BenchmarkClassify(b *testing.B) {
	j := defaultRules()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		j.Classify(benchNames[i%len(benchNames)])
	}
}

func BenchmarkAKSRegexp(b *testing.B) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		aksRegexp.MatchString(benchNames[i%len(benchNames)])
	}
}
