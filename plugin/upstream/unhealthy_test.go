package upstream_test

import (
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

// TestAllUnhealthyFailFastOrTry: an upstream whose health probes fail but
// which answers queries (a probe name it does not answer) is marked down.
// By default (AKS's failfastAllUnhealthyUpstreams: true) the query is
// answered SERVFAIL at once, without sending it; with try_unhealthy
// (failfastAllUnhealthyUpstreams: false, forward's default) it is sent
// anyway and answered.
func TestAllUnhealthyFailFastOrTry(t *testing.T) {
	fast, try := startFake(t, "192.0.2.31"), startFake(t, "192.0.2.32")
	fast.badProbe.Store(true)
	try.badProbe.Store(true)
	fastSrv := startLocaldns(t, upstreamBlock("to "+fast.addr, "group_names failfast", "health_check 0.1s"))
	trySrv := startLocaldns(t, upstreamBlock("to "+try.addr, "group_names tryanyway", "health_check 0.1s", "try_unhealthy"))
	waitFor(t, 5*time.Second, "both upstreams marked down", func() bool {
		return markedDown(t, "failfast", fast.addr) && markedDown(t, "tryanyway", try.addr)
	})

	r, took := ask(t, fastSrv, "udp", "www.example.com", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure || took > 50*time.Millisecond {
		t.Fatalf("fail fast: rcode %s after %s, want SERVFAIL within 50ms", dns.RcodeToString[r.Rcode], took)
	}
	if n := len(fast.seen()); n != 0 {
		t.Fatalf("fail fast sent %d queries to a down upstream", n)
	}
	t.Logf("fail fast: SERVFAIL after %s", took)

	r, _ = ask(t, trySrv, "udp", "www.example.com", dns.TypeA)
	if answerOf(r) != "192.0.2.32" {
		t.Fatalf("try_unhealthy: got %v, want the answer of the upstream marked down", r)
	}
	if n := len(try.seen()); n != 1 {
		t.Fatalf("try_unhealthy sent %d queries, want 1", n)
	}
}

// probeRecorder is an upstream that answers every query with an empty
// NOERROR and records the NS probes it gets: name and RD bit.
type probeRecorder struct {
	mu     sync.Mutex
	probes []dns.Msg
}

func (p *probeRecorder) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if r.Question[0].Qtype == dns.TypeNS {
		p.mu.Lock()
		p.probes = append(p.probes, *r.Copy())
		p.mu.Unlock()
	}
	m := new(dns.Msg)
	m.SetReply(r)
	w.WriteMsg(m)
}

func (p *probeRecorder) seen() []dns.Msg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]dns.Msg(nil), p.probes...)
}

// TestHealthCheckOptionsReachProbes: health_check's interval, no_rec and
// domain (AKS's healthCheck duration, noRec, domain) are what the upstream
// sees in the probes.
func TestHealthCheckOptionsReachProbes(t *testing.T) {
	var norec, rec probeRecorder
	norecAddr, _ := testdns.Serve(t, &norec)
	recAddr, _ := testdns.Serve(t, &rec)
	startLocaldns(t, upstreamBlock("to "+norecAddr, "group_names probes1", "health_check 100ms no_rec domain Probe.Example"))
	startLocaldns(t, upstreamBlock("to "+recAddr, "group_names probes2", "health_check 100ms"))
	start := time.Now()
	waitFor(t, 5*time.Second, "five probes on each upstream", func() bool {
		return len(norec.seen()) >= 5 && len(rec.seen()) >= 5
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("five probes took %s at a 100ms interval", took)
	}
	for _, m := range norec.seen() {
		if q := m.Question[0]; q.Name != "probe.example." || m.RecursionDesired {
			t.Fatalf("no_rec domain probe.example: probe %s RD=%v", q.Name, m.RecursionDesired)
		}
	}
	for _, m := range rec.seen() {
		if q := m.Question[0]; q.Name != "." || !m.RecursionDesired {
			t.Fatalf("default probe: %s RD=%v, want . with RD", q.Name, m.RecursionDesired)
		}
	}
}
