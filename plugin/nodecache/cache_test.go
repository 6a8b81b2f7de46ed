package nodecache_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/plugin/nodecache"
)

func TestHitEchoesCasingAndCountsDownTTL(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.1", 300))
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)

	first := ask(t, addr, "www.example.org.", qopt{})
	if len(first.Answer) != 1 || first.Answer[0].Header().Ttl != 300 {
		t.Fatalf("miss answer: %v", first.Answer)
	}
	hit := ask(t, addr, "WwW.ExAmPlE.oRg.", qopt{})
	if up.count("www.example.org.") != 1 {
		t.Fatalf("upstream saw %d queries, want 1 (second should hit)", up.count("www.example.org."))
	}
	if hit.Question[0].Name != "WwW.ExAmPlE.oRg." {
		t.Fatalf("question casing not echoed: %s", hit.Question[0].Name)
	}
	if a, ok := hit.Answer[0].(*dns.A); !ok || !a.A.Equal(net.ParseIP("192.0.2.1")) {
		t.Fatalf("hit answer: %v", hit.Answer)
	}
	if !hit.Response || !hit.RecursionDesired || !hit.RecursionAvailable || hit.Rcode != dns.RcodeSuccess {
		t.Fatalf("hit header wrong: %+v", hit.MsgHdr)
	}

	clock.advance(100 * time.Second)
	aged := ask(t, addr, "www.example.org.", qopt{})
	if got := aged.Answer[0].Header().Ttl; got < 199 || got > 200 {
		t.Fatalf("TTL after 100 s: %d, want 200", got)
	}
	clock.advance(199*time.Second + 500*time.Millisecond)
	last := ask(t, addr, "www.example.org.", qopt{})
	if got := last.Answer[0].Header().Ttl; got > 1 {
		t.Fatalf("TTL half a second before expiry: %d, want at most 1", got)
	}
	if up.count("www.example.org.") != 1 {
		t.Fatalf("upstream saw %d queries, want 1", up.count("www.example.org."))
	}
}

func TestKeyIncludesTypeDOAndCD(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.2", 300))
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)
	name := "key.example.org."
	variants := []qopt{{}, {edns: 1232}, {edns: 1232, do: true}, {cd: true}, {qtype: dns.TypeAAAA}}
	for i, o := range variants {
		ask(t, addr, name, o)
		ask(t, addr, name, o)
		// Without EDNS0 and with EDNS0 but DO=0 share a key: the cache asks
		// upstream with its own EDNS0 record in both cases.
		want := i + 1
		if i >= 1 {
			want = i
		}
		if got := up.count(name); got != want {
			t.Fatalf("after variant %d (%+v): upstream saw %d queries, want %d", i, o, got, want)
		}
	}
}

func TestTTLCapsAndNegativeCaching(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case strings.HasPrefix(q.Name, "long."):
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 86400}, A: net.IPv4(192, 0, 2, 3)}}
		case strings.HasPrefix(q.Name, "zero."):
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0}, A: net.IPv4(192, 0, 2, 4)}}
		case strings.HasPrefix(q.Name, "nx."):
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa("example.org.", 900, 40)}
		case strings.HasPrefix(q.Name, "nxbig."):
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa("example.org.", 9000, 9000)}
		case strings.HasPrefix(q.Name, "nodata."):
			m.Ns = []dns.RR{soa("example.org.", 20, 600)}
		case strings.HasPrefix(q.Name, "nxnosoa."):
			m.Rcode = dns.RcodeNameError
		// RFC 2181 section 8: a TTL with the top bit set means 0.
		case strings.HasPrefix(q.Name, "topbit."):
			m.Answer = []dns.RR{
				&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 5)},
				&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1 << 31}, A: net.IPv4(192, 0, 2, 6)},
			}
		case strings.HasPrefix(q.Name, "nxtopttl."):
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa("example.org.", 0xFFFFFFFF, 60)}
		case strings.HasPrefix(q.Name, "nodatatopmin."):
			m.Ns = []dns.RR{soa("example.org.", 60, 0x80000001)}
		}
		return m
	})
	s := startServer(t, corefile(up, "    max_ttl 600\n    denial_ttl 120\n    serve_stale off"))
	addr := s.addr(0)
	for _, tc := range []struct {
		name   string
		rcode  int
		ttl    uint32
		cached bool
	}{
		{"long.example.org.", dns.RcodeSuccess, 600, true},       // capped by max_ttl
		{"zero.example.org.", dns.RcodeSuccess, 5, true},         // 5 s floor
		{"nx.example.org.", dns.RcodeNameError, 40, true},        // min(SOA TTL, MINIMUM)
		{"nxbig.example.org.", dns.RcodeNameError, 120, true},    // capped by denial_ttl
		{"nodata.example.org.", dns.RcodeSuccess, 20, true},      // NODATA: SOA TTL < MINIMUM
		{"nxnosoa.example.org.", dns.RcodeNameError, 0, false},   // no SOA: not cacheable
		{"topbit.example.org.", dns.RcodeSuccess, 5, true},       // 2^31: 0, then the 5 s floor
		{"nxtopttl.example.org.", dns.RcodeNameError, 5, true},   // SOA TTL 2^32-1: 0
		{"nodatatopmin.example.org.", dns.RcodeSuccess, 5, true}, // SOA MINIMUM 2^31+1: 0
	} {
		t.Run(tc.name, func(t *testing.T) {
			ask(t, addr, tc.name, qopt{})
			m := ask(t, addr, tc.name, qopt{})
			if m.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
			}
			want := 1
			if !tc.cached {
				want = 2
			}
			if got := up.count(tc.name); got != want {
				t.Fatalf("upstream saw %d queries, want %d", got, want)
			}
			if !tc.cached {
				return
			}
			for _, rr := range append(m.Answer, m.Ns...) {
				if rr.Header().Ttl != tc.ttl {
					t.Fatalf("TTL %d, want %d: %v", rr.Header().Ttl, tc.ttl, rr)
				}
			}
		})
	}
	// An expired negative entry is gone with serve_stale off.
	clock.advance(41 * time.Second)
	ask(t, addr, "nx.example.org.", qopt{})
	if got := up.count("nx.example.org."); got != 2 {
		t.Fatalf("expired NXDOMAIN: upstream saw %d queries, want 2", got)
	}
}

func TestErrorsAndTruncatedAnswersAreNotCached(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		switch r.Question[0].Name {
		case "servfail.example.org.":
			m.Rcode = dns.RcodeServerFailure
		case "refused.example.org.":
			m.Rcode = dns.RcodeRefused
		case "formerr.example.org.":
			m.Rcode = dns.RcodeFormatError
		case "tc.example.org.":
			m.Truncated = true
			// Passed on, not cached: the TTL still follows RFC 2181 section 8.
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1 << 31}, A: net.IPv4(192, 0, 2, 7)}}
		}
		return m
	})
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)
	for _, tc := range []struct {
		name  string
		rcode int
	}{
		{"servfail.example.org.", dns.RcodeServerFailure},
		{"refused.example.org.", dns.RcodeRefused},
		{"formerr.example.org.", dns.RcodeFormatError},
		{"tc.example.org.", dns.RcodeSuccess},
	} {
		for range 2 {
			m := ask(t, addr, tc.name, qopt{})
			if m.Rcode != tc.rcode {
				t.Fatalf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
			}
			for _, rr := range m.Answer {
				if rr.Header().Ttl != 0 {
					t.Fatalf("%s: TTL %d passed on, want 0 (RFC 2181 section 8)", tc.name, rr.Header().Ttl)
				}
			}
		}
		if got := up.count(tc.name); got != 2 {
			t.Fatalf("%s: upstream saw %d queries, want 2 (not cached)", tc.name, got)
		}
	}
}

func TestTruncationAndTCP(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := range 60 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(10, 0, byte(i>>8), byte(i))})
		}
		return m
	})
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)
	name := "big.example.org."
	full := ask(t, addr, name, qopt{net: "tcp"})
	if len(full.Answer) != 60 || full.Truncated {
		t.Fatalf("TCP miss: %d answers, TC=%v", len(full.Answer), full.Truncated)
	}
	for _, tc := range []struct {
		o    qopt
		tc   bool
		opt  bool
		size int
	}{
		{qopt{net: "tcp"}, false, false, 0},
		{qopt{}, true, false, 512},
		{qopt{edns: 600}, true, true, 600},
		{qopt{edns: 4096}, false, true, 4096},
	} {
		m := ask(t, addr, name, tc.o)
		if m.Truncated != tc.tc {
			t.Fatalf("%+v: TC=%v, want %v", tc.o, m.Truncated, tc.tc)
		}
		if tc.tc && (len(m.Answer) == 0 || len(m.Answer) == 60) || !tc.tc && len(m.Answer) != 60 {
			t.Fatalf("%+v: %d answers", tc.o, len(m.Answer))
		}
		if (m.IsEdns0() != nil) != tc.opt {
			t.Fatalf("%+v: OPT present=%v, want %v", tc.o, m.IsEdns0() != nil, tc.opt)
		}
		m.Compress = true
		if tc.size > 0 && m.Len() > tc.size {
			t.Fatalf("%+v: %d bytes > %d", tc.o, m.Len(), tc.size)
		}
	}
	if got := up.count(name); got != 1 {
		t.Fatalf("upstream saw %d queries, want 1", got)
	}
}

func TestOPTHandling(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, func(r *dns.Msg) *dns.Msg {
		m := aAnswer("192.0.2.5", 300)(r)
		m.SetEdns0(4096, true)
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "7570737472656d"})
		return m
	})
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)
	for i, o := range []qopt{{edns: 1400}, {edns: 1400}, {}, {}} {
		m := ask(t, addr, "opt.example.org.", o)
		opt := m.IsEdns0()
		if o.edns == 0 {
			if opt != nil {
				t.Fatalf("query %d without EDNS0 got an OPT record", i)
			}
			continue
		}
		if opt == nil {
			t.Fatalf("query %d with EDNS0 got no OPT record", i)
		}
		if opt.UDPSize() != nodecache.AdvertisedUDPSize || opt.Do() || len(opt.Option) != 0 {
			t.Fatalf("query %d: OPT size %d DO %v options %v; want our size, no DO, no upstream options", i, opt.UDPSize(), opt.Do(), opt.Option)
		}
		if n := strings.Count(m.String(), "OPT PSEUDOSECTION"); n != 1 {
			t.Fatalf("query %d: %d OPT records", i, n)
		}
	}
}

func TestServeStaleImmediate(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.10", 10))
	s := startServer(t, corefile(up, "    serve_stale immediate 60\n    prefetch 0"))
	addr := s.addr(0)
	name := "stale.example.org."
	ask(t, addr, name, qopt{edns: 1232})

	// A slow, failing upstream: the stale answers must not wait for it, and
	// all of them together cause one refresh.
	up.set(rcodeAnswer(dns.RcodeServerFailure))
	up.setDelay(300 * time.Millisecond)
	clock.advance(15 * time.Second)
	start := time.Now()
	before := counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label))
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := exchange(addr, name, qopt{edns: 1232})
			if err != nil {
				t.Error(err)
				return
			}
			if code, ok := ede(m); !ok || code != dns.ExtendedErrorCodeStaleAnswer {
				t.Errorf("stale answer without EDE 3: %v", m)
			}
			if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != nodecache.StaleTTL {
				t.Errorf("stale answer: %v", m.Answer)
			}
		}()
	}
	wg.Wait()
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("stale answers took %s: they waited for the upstream", took)
	}
	waitFor(t, "refresh failure", func() bool {
		return counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label)) > before
	})
	// Ten stale answers, one refresh (one in flight per key at a time).
	if got := up.count(name); got != 2 {
		t.Fatalf("upstream saw %d queries, want the miss and one refresh", got)
	}
	up.setDelay(0)
	// The failed refresh kept the stale entry.
	if m := ask(t, addr, name, qopt{edns: 1232}); len(m.Answer) != 1 || m.Rcode != dns.RcodeSuccess {
		t.Fatalf("after a failed refresh: %v", m)
	}
	// Without EDNS0: stale answer, no OPT.
	m := ask(t, addr, name, qopt{})
	if m.IsEdns0() != nil || len(m.Answer) != 1 {
		t.Fatalf("stale answer to a query without EDNS0: %v", m)
	}

	// Within 30 s of the failure no refresh is tried (RFC 8767 failure
	// recheck); after that the recovered upstream's answer replaces the entry.
	up.set(aAnswer("192.0.2.11", 10))
	ask(t, addr, name, qopt{edns: 1232})
	time.Sleep(50 * time.Millisecond)
	if got := up.count(name); got != 2 {
		t.Fatalf("refresh retried within the failure recheck time: %d queries", got)
	}
	clock.advance(31 * time.Second)
	waitFor(t, "fresh answer after refresh", func() bool {
		m := ask(t, addr, name, qopt{edns: 1232})
		_, stale := ede(m)
		return !stale && m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.11"))
	})

	// Past TTL + stale window nothing stale is served.
	up.set(rcodeAnswer(dns.RcodeServerFailure))
	clock.advance(10*time.Second + 61*time.Second)
	if m := ask(t, addr, name, qopt{edns: 1232}); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("past the stale window: %v", m)
	}
}

func TestServeStaleVerify(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.20", 10))
	s := startServer(t, corefile(up, "    serve_stale verify 3600\n    verify_timeout 200ms\n    prefetch 0"))
	addr := s.addr(0)
	name := "verify.example.org."
	ask(t, addr, name, qopt{edns: 1232})

	// A healthy upstream is asked first and its new answer served.
	up.set(aAnswer("192.0.2.21", 10))
	clock.advance(11 * time.Second)
	m := ask(t, addr, name, qopt{edns: 1232})
	if _, stale := ede(m); stale || !m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.21")) {
		t.Fatalf("verify with a healthy upstream: %v", m)
	}

	// A silent upstream: stale after verify_timeout.
	up.set(silent)
	clock.advance(11 * time.Second)
	start := time.Now()
	m = ask(t, addr, name, qopt{edns: 1232})
	took := time.Since(start)
	if code, ok := ede(m); !ok || code != dns.ExtendedErrorCodeStaleAnswer || m.Answer[0].Header().Ttl != nodecache.StaleTTL {
		t.Fatalf("verify with a silent upstream: %v", m)
	}
	if took < 150*time.Millisecond || took > 1500*time.Millisecond {
		t.Fatalf("stale answer after %s, want about verify_timeout (200ms)", took)
	}

	// A failing upstream: stale at once. First let the exchange started
	// for the silent upstream end (forward retries and gets REFUSED).
	failures := counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label))
	up.set(rcodeAnswer(dns.RcodeRefused))
	waitFor(t, "the silent exchange to end", func() bool {
		return counterValue(nodecache.RefreshFailuresTotal.WithLabelValues(label)) > failures
	})
	clock.advance(31 * time.Second) // past the failure recheck of that attempt
	before := up.count(name)
	m = ask(t, addr, name, qopt{edns: 1232})
	if _, stale := ede(m); !stale || m.Rcode != dns.RcodeSuccess || up.count(name) != before+1 {
		t.Fatalf("verify with a refusing upstream: %v (upstream asked %d times)", m, up.count(name)-before)
	}
	// Within 30 s of that failure, stale answers come without asking again.
	for range 3 {
		start := time.Now()
		m = ask(t, addr, name, qopt{edns: 1232})
		if _, stale := ede(m); !stale || time.Since(start) > 150*time.Millisecond {
			t.Fatalf("after a failed verify: %v in %s", m, time.Since(start))
		}
	}
	if got := up.count(name) - before; got != 1 {
		t.Fatalf("upstream asked %d times within the failure recheck time, want 1", got)
	}
}

func TestServeStaleOff(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.30", 10))
	s := startServer(t, corefile(up, "    serve_stale off"))
	addr := s.addr(0)
	ask(t, addr, "off.example.org.", qopt{})
	up.set(rcodeAnswer(dns.RcodeServerFailure))
	clock.advance(11 * time.Second)
	if m := ask(t, addr, "off.example.org.", qopt{}); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("serve_stale off served: %v", m)
	}
}

func TestCoalescing(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.40", 300))
	up.setDelay(300 * time.Millisecond)
	s := startServer(t, corefile(up, ""))
	addr := s.addr(0)
	c0 := counterValue(nodecache.CoalescedTotal.WithLabelValues(label))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Mixed casing: one key.
			name := "coalesce.example.org."
			if i%2 == 1 {
				name = "COALESCE.example.org."
			}
			m, err := exchange(addr, name, qopt{})
			if err != nil || len(m.Answer) != 1 {
				t.Errorf("query %d: %v %v", i, m, err)
			}
		}()
	}
	wg.Wait()
	if got := up.count("coalesce.example.org."); got != 1 {
		t.Fatalf("20 concurrent misses sent %d upstream queries, want 1", got)
	}
	if got := counterValue(nodecache.CoalescedTotal.WithLabelValues(label)) - c0; got < 15 {
		t.Fatalf("coalesced misses metric %v, want about 19", got)
	}
}

func TestPrefetch(t *testing.T) {
	clock := freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.50", 100))
	s := startServer(t, corefile(up, "    prefetch 3"))
	addr := s.addr(0)
	name := "hot.example.org."
	cold := "cold.example.org."
	ask(t, addr, name, qopt{})
	ask(t, addr, cold, qopt{})
	for range 3 {
		ask(t, addr, name, qopt{})
	}
	clock.advance(95 * time.Second) // 5 s left: < 10% of 100 s
	ask(t, addr, name, qopt{})
	ask(t, addr, cold, qopt{})
	waitFor(t, "prefetch", func() bool {
		return ask(t, addr, name, qopt{}).Answer[0].Header().Ttl > 50
	})
	clock.advance(10 * time.Second) // the original entry would have expired
	m := ask(t, addr, name, qopt{edns: 1232})
	if _, stale := ede(m); stale || m.Answer[0].Header().Ttl < 85 {
		t.Fatalf("hot name after prefetch: %v", m)
	}
	if got := up.count(name); got != 2 {
		t.Fatalf("hot name: upstream saw %d queries, want 2", got)
	}
	if got := up.count(cold); got != 1 {
		t.Fatalf("cold name (1 hit) was prefetched: upstream saw %d queries", got)
	}
}

func TestBlocksDoNotShareAnswers(t *testing.T) {
	freshStore(t)
	one := startUpstream(t, aAnswer("192.0.2.61", 300))
	two := startUpstream(t, aAnswer("192.0.2.62", 300))
	s := startServer(t, fmt.Sprintf(`.:0 {
  bind 127.0.0.1
  nodecache
  forward . %s
}
.:0 {
  bind 127.0.0.2
  nodecache
  forward . %s
}
`, one.addr, two.addr))
	want := map[string]string{"127.0.0.1": "192.0.2.61", "127.0.0.2": "192.0.2.62"}
	for i := range 2 {
		a := s.addr(i)
		host, _, _ := net.SplitHostPort(a.udp)
		for range 2 {
			m := ask(t, a, "split.example.org.", qopt{})
			if !m.Answer[0].(*dns.A).A.Equal(net.ParseIP(want[host])) {
				t.Fatalf("block on %s answered %v, want %s", host, m.Answer, want[host])
			}
		}
	}
	if nodecache.Shared().Len() != 2 {
		t.Fatalf("store has %d entries, want 2", nodecache.Shared().Len())
	}
}

func TestReloadKeepsEntries(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.70", 300))
	cf := corefile(up, "    max_ttl 600")
	s := startServer(t, cf)
	ask(t, s.addr(0), "reload.example.org.", qopt{})
	store := nodecache.Shared()
	next, err := s.inst.Restart(s.inst.Caddyfile())
	if err != nil {
		t.Fatal(err)
	}
	s.inst = next
	if nodecache.Shared() != store {
		t.Fatal("reload replaced the process-wide store")
	}
	ask(t, s.addr(0), "reload.example.org.", qopt{})
	if got := up.count("reload.example.org."); got != 1 {
		t.Fatalf("after reload upstream saw %d queries, want 1", got)
	}
}

func TestHitPathMetrics(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.80", 300))
	s := startServer(t, corefile(up, ""))
	hits0 := counterValue(nodecache.HitsTotal.WithLabelValues(label))
	miss0 := counterValue(nodecache.MissesTotal.WithLabelValues(label))
	for range 3 {
		ask(t, s.addr(0), "metrics.example.org.", qopt{})
	}
	if d := counterValue(nodecache.HitsTotal.WithLabelValues(label)) - hits0; d != 2 {
		t.Fatalf("hits +%v, want +2", d)
	}
	if d := counterValue(nodecache.MissesTotal.WithLabelValues(label)) - miss0; d != 1 {
		t.Fatalf("misses +%v, want +1", d)
	}
}

func TestMemoryMustAgreeAcrossBlocks(t *testing.T) {
	freshStore(t)
	_, err := caddy.Start(caddy.CaddyfileInput{ServerTypeName: "dns", Contents: []byte(`.:0 {
  bind 127.0.0.1
  nodecache {
    memory 16777216
  }
}
cluster.local:0 {
  bind 127.0.0.1
  nodecache {
    memory 33554432
  }
}
`)})
	if err == nil || !strings.Contains(err.Error(), "memory is process-wide") {
		t.Fatalf("blocks with different memory: %v", err)
	}
}

// TestFloodThroughServer: a client floods unique random names while hot
// names keep being asked for; the store stays within its 1 MiB budget and
// the hot names never go upstream again.
func TestFloodThroughServer(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.99", 3600))
	s := startServer(t, corefile(up, "    memory 1048576"))
	addr := s.addr(0)
	hot := make([]string, 50)
	for i := range hot {
		hot[i] = fmt.Sprintf("hot%d.example.org.", i)
		ask(t, addr, hot[i], qopt{}) // miss
		ask(t, addr, hot[i], qopt{}) // hit: no longer a one-hit wonder
	}
	const workers, perWorker = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Timeout: 5 * time.Second}
			for i := range perWorker {
				q := new(dns.Msg).SetQuestion(fmt.Sprintf("r%d-%d.flood.example.org.", w, i), dns.TypeA)
				if _, _, err := c.Exchange(q, addr.udp); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 0 {
					h := new(dns.Msg).SetQuestion(hot[(i/10+w)%len(hot)], dns.TypeA)
					if _, _, err := c.Exchange(h, addr.udp); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	store := nodecache.Shared()
	if store.Bytes() > store.Budget() {
		t.Fatalf("%d bytes in a %d byte budget", store.Bytes(), store.Budget())
	}
	if store.Evictions() == 0 {
		t.Fatal("no evictions: the flood did not fill the budget")
	}
	for _, name := range hot {
		if got := up.count(name); got != 1 {
			t.Fatalf("hot name %s went upstream %d times", name, got)
		}
	}
	t.Logf("%d entries, %d of %d bytes, %d evictions", store.Len(), store.Bytes(), store.Budget(), store.Evictions())
}

func TestMetricNames(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, aAnswer("192.0.2.100", 300))
	s := startServer(t, corefile(up, ""))
	ask(t, s.addr(0), "names.example.org.", qopt{})
	ask(t, s.addr(0), "names.example.org.", qopt{})
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range []string{
		"localdns_cache_entries", "localdns_cache_size_bytes", "localdns_cache_budget_bytes",
		"localdns_cache_hits_total", "localdns_cache_misses_total", "localdns_cache_evictions_total",
		"localdns_cache_snapshot_saved_entries", "localdns_cache_snapshot_restored_entries",
		"localdns_cache_snapshot_timestamp_seconds",
	} {
		if !have[name] {
			t.Errorf("metric %s not registered with the default registerer", name)
		}
	}
}
