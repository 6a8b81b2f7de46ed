package upstream

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestMemberMetricsChildren checks that the metric children a member keeps
// are the vectors' series for its labels, created only when first used.
func TestMemberMetricsChildren(t *testing.T) {
	m := &member{group: "metrics-test", addr: "192.0.2.1:53"}
	if n := seriesOf(t, "localdns_upstream_request_duration_seconds", m.group); n != 0 {
		t.Fatalf("%d duration series before any query, want 0", n)
	}

	for range 3 {
		m.requests().Inc()
	}
	m.duration(dns.RcodeSuccess).Observe(0.001)
	m.duration(dns.RcodeSuccess).Observe(0.001)
	m.duration(dns.RcodeNameError).Observe(0.001)
	m.durationError().Observe(0.5)
	m.duration(dns.RcodeBadVers).Observe(0.001) // extended: 16, not the error slot

	if got := counterValue(requests.WithLabelValues(m.group, m.addr)); got != 3 {
		t.Errorf("requests_total = %v, want 3", got)
	}
	for label, want := range map[string]uint64{"NOERROR": 2, "NXDOMAIN": 1, "error": 1, "BADSIG": 1} {
		if got := histCount(t, requestDuration.WithLabelValues(m.group, m.addr, label)); got != want {
			t.Errorf("request_duration_seconds{rcode=%q} count = %d, want %d", label, got, want)
		}
	}
	if n := seriesOf(t, "localdns_upstream_request_duration_seconds", m.group); n != 4 {
		t.Errorf("%d duration series, want 4 (NOERROR, NXDOMAIN, error, BADSIG)", n)
	}
}

func histCount(t *testing.T, o prometheus.Observer) uint64 {
	t.Helper()
	var d dto.Metric
	if err := o.(prometheus.Metric).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}

// seriesOf counts the series of the metric family name with label group.
func seriesOf(t *testing.T, name, group string) int {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "group" && l.GetValue() == group {
					n++
				}
			}
		}
	}
	return n
}
