package nodecache_test

import (
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/plugin/nodecache"
)

// TestPinnedRefreshedAndServedThroughOutage: a pinned name is asked for
// upstream on the pin_refresh interval (A and AAAA) without any client
// asking, and is answered through an upstream outage far longer than its
// TTL plus the block's stale window, while an unpinned name cached at the
// same time is gone.
func TestPinnedRefreshedAndServedThroughOutage(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.77", 1))
	srv := startServer(t, corefile(up, "    serve_stale immediate 1\n    pin Critical.Example.org\n    pin_refresh 200ms"))
	addr := srv.addr(0)

	// Refreshed in the background, several times, both types.
	waitFor(t, "three rounds of pin refreshes", func() bool { return up.count("critical.example.org.") >= 6 })
	if got := counterValue(nodecache.PinRefreshesTotal.WithLabelValues(label)); got < 6 {
		t.Fatalf("pin refreshes counted: %v", got)
	}
	m := ask(t, addr, "critical.example.org.", qopt{})
	if len(m.Answer) != 1 || !m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.77")) {
		t.Fatalf("pinned name: %v", m)
	}
	if before := up.count("critical.example.org."); before == 0 {
		t.Fatal("no upstream query for the pinned name")
	}
	ask(t, addr, "ordinary.example.org.", qopt{})

	// The outage: every upstream answer is SERVFAIL, for an hour of the
	// store's clock (TTL 1 s, stale window 1 s); the refreshes keep failing.
	up.set(rcodeAnswer(dns.RcodeServerFailure))
	failures := counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label))
	clock.advance(time.Hour)
	waitFor(t, "pin refreshes failing", func() bool {
		return counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label)) >= failures+2
	})
	for range 3 {
		m := ask(t, addr, "critical.example.org.", qopt{edns: 1232})
		if code, ok := ede(m); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || !ok || code != dns.ExtendedErrorCodeStaleAnswer {
			t.Fatalf("pinned name during the outage: %v", m)
		}
		if !m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.77")) {
			t.Fatalf("pinned name during the outage: %v", m.Answer)
		}
		clock.advance(10 * time.Minute)
	}
	if m := ask(t, addr, "ordinary.example.org.", qopt{}); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("unpinned name past its stale window during the outage: %v", m)
	}

	// The upstream is back with a new address: the next refresh takes it
	// without any client asking.
	up.set(aAnswer("192.0.2.78", 3600))
	waitFor(t, "pinned name refreshed after the outage", func() bool {
		m, err := exchange(addr, "critical.example.org.", qopt{})
		return err == nil && len(m.Answer) == 1 && m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.78")) && m.Answer[0].Header().Ttl > 3000
	})
}

// TestPinnedSurvivesRestart: a pinned name is in the snapshot and restored
// however long ago it expired, and answered after the restart with every
// upstream down, before any refresh succeeded; an unpinned name saved with
// it is dropped as expired.
func TestPinnedSurvivesRestart(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.79", 5))
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	cf := corefile(up, fmt.Sprintf("    serve_stale immediate 10\n    snapshot %s 60s\n    pin critical.example.org\n    pin_refresh 1h", path))
	first := startServer(t, cf)
	ask(t, first.addr(0), "critical.example.org.", qopt{})
	ask(t, first.addr(0), "ordinary.example.org.", qopt{})
	first.stop()
	up.stop()

	// A new process two hours later, every upstream down.
	clock := freshStore(t)
	clock.set(2 * time.Hour)
	second := startServer(t, cf)
	if got := gaugeValue(t, nodecache.SnapshotRestored); got < 1 {
		t.Fatalf("restored %v entries", got)
	}
	m := ask(t, second.addr(0), "critical.example.org.", qopt{edns: 1232})
	if code, ok := ede(m); !ok || code != dns.ExtendedErrorCodeStaleAnswer || len(m.Answer) != 1 || !m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.79")) {
		t.Fatalf("pinned name after a restart with the upstream down: %v", m)
	}
	if m := ask(t, second.addr(0), "ordinary.example.org.", qopt{}); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("expired unpinned name after the restart: %v", m)
	}
}
