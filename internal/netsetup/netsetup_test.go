package netsetup

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var (
	nodeListener    = netip.MustParseAddr("169.254.10.10")
	clusterListener = netip.MustParseAddr("169.254.10.11")
	v6Listener      = netip.MustParseAddr("2001:db8::53")
)

func TestConfigValidation(t *testing.T) {
	a := nodeListener
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no addresses", Config{}, "no listener addresses"},
		{"duplicate", Config{Addrs: []netip.Addr{a, a}}, "given twice"},
		{"mapped duplicate", Config{Addrs: []netip.Addr{a, netip.AddrFrom16(a.As16())}}, "given twice"},
		{"invalid", Config{Addrs: []netip.Addr{{}}}, "invalid"},
		{"unspecified", Config{Addrs: []netip.Addr{netip.IPv4Unspecified()}}, "not a unicast"},
		{"long link", Config{LinkName: "localdns-too-long", Addrs: []netip.Addr{a}}, "longer than 15"},
		{"lo", Config{LinkName: "lo", Addrs: []netip.Addr{a}}, "reserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
	cfg, err := Config{Addrs: []netip.Addr{a}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LinkName != "localdns" || cfg.Table != "localdns" || cfg.Port != 53 {
		t.Errorf("defaults: got link %q table %q port %d", cfg.LinkName, cfg.Table, cfg.Port)
	}
}

func TestWantRules(t *testing.T) {
	cfg := Config{Addrs: []netip.Addr{nodeListener, clusterListener, v6Listener}, Port: 53}
	if got, want := len(wantRules(cfg)), 3*2*2; got != want {
		t.Errorf("without reply notrack: %d rules, want %d", got, want)
	}
	cfg.ReplyNotrack = true
	if got, want := len(wantRules(cfg)), 3*2*2+3*2; got != want {
		t.Errorf("with reply notrack: %d rules, want %d", got, want)
	}
}

// addrsOn returns how often each host address appears on the named link.
func addrsOn(t *testing.T, ns netns.NsHandle, link string) map[netip.Addr]int {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	m := map[netip.Addr]int{}
	for _, a := range list {
		ip, _ := netip.AddrFromSlice(a.IP)
		m[ip.Unmap()]++
	}
	return m
}

// snapshot is what a namespace looks like from outside: links, addresses and
// the whole nftables ruleset.
func snapshot(t *testing.T, name string) string {
	t.Helper()
	return inNS(t, name, "ip", "-o", "link", "show") +
		inNS(t, name, "ip", "-o", "addr", "show") +
		inNS(t, name, "nft", "list", "ruleset")
}

func TestLifecycle(t *testing.T) {
	ns, name := newNS(t)
	before := snapshot(t, name)

	reg := prometheus.NewRegistry()
	cfg := Config{
		Addrs:        []netip.Addr{nodeListener, clusterListener, v6Listener},
		ReplyNotrack: true,
		StateDir:     filepath.Join(t.TempDir(), "run"),
		NetNS:        ns,
		Metrics:      NewMetrics(reg),
	}
	wantRuleCount := len(wantRules(Config{Addrs: cfg.Addrs, ReplyNotrack: true}))

	res, err := EnsureAddresses(cfg)
	if err != nil {
		t.Fatalf("EnsureAddresses: %v", err)
	}
	t.Logf("addresses on %s (fallback %v: %s)", res.Link, res.Fallback, res.Reason)
	if res.Fallback != (res.Link == "lo") {
		t.Errorf("Fallback %v with link %s", res.Fallback, res.Link)
	}
	if len(res.Added) != len(cfg.Addrs) {
		t.Errorf("Added %v, want all of %v", res.Added, cfg.Addrs)
	}
	if err := EnsureRules(cfg); err != nil {
		t.Fatalf("EnsureRules: %v", err)
	}

	check := func(when string) {
		t.Helper()
		on := addrsOn(t, ns, res.Link)
		for _, a := range cfg.Addrs {
			if on[a] != 1 {
				t.Errorf("%s: %s on %s %d times, want once", when, a, res.Link, on[a])
			}
		}
		listing := inNS(t, name, "nft", "list", "table", "inet", "localdns")
		if got := strings.Count(listing, `notrack comment "localdns: skip conntrack"`); got != wantRuleCount {
			t.Errorf("%s: nft lists %d notrack rules, want %d:\n%s", when, got, wantRuleCount, listing)
		}
		for _, want := range []string{
			"type filter hook prerouting priority raw; policy accept;",
			"type filter hook output priority raw; policy accept;",
			`ip daddr 169.254.10.11 udp dport 53 counter packets 0 bytes 0 notrack comment "localdns: skip conntrack"`,
			`ip daddr 169.254.10.10 tcp dport 53 counter packets 0 bytes 0 notrack comment "localdns: skip conntrack"`,
			`ip saddr 169.254.10.11 udp sport 53 counter packets 0 bytes 0 notrack comment "localdns: skip conntrack"`,
			`ip6 daddr 2001:db8::53 udp dport 53 counter packets 0 bytes 0 notrack comment "localdns: skip conntrack"`,
			`ip6 saddr 2001:db8::53 tcp sport 53 counter packets 0 bytes 0 notrack comment "localdns: skip conntrack"`,
		} {
			if !strings.Contains(listing, want) {
				t.Errorf("%s: nft listing lacks %q:\n%s", when, want, listing)
			}
		}
		s, err := Status(cfg)
		if err != nil {
			t.Fatalf("%s: Status: %v", when, err)
		}
		if !s.RulesIntact || s.Rules != wantRuleCount || s.WantRules != wantRuleCount || !s.LinkUp || !s.StateFile {
			t.Errorf("%s: Status %+v", when, s)
		}
		for _, as := range s.Addrs {
			if !as.Present {
				t.Errorf("%s: Status says %s is missing", when, as.Addr)
			}
		}
	}
	check("first run")
	t.Logf("nft list table inet localdns:\n%s", inNS(t, name, "nft", "list", "table", "inet", "localdns"))

	// A second run adds nothing.
	res2, err := EnsureAddresses(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Changed() {
		t.Errorf("second EnsureAddresses changed something: %+v", res2)
	}
	if err := EnsureRules(cfg); err != nil {
		t.Fatal(err)
	}
	check("second run")

	rep, err := Reconcile(context.Background(), cfg)
	if err != nil || rep.Total() != 0 {
		t.Fatalf("Reconcile with nothing broken: %+v, %v", rep, err)
	}

	// Break things by hand, the way an operator or another agent would.
	inNS(t, name, "ip", "addr", "del", "169.254.10.11/32", "dev", res.Link)
	inNS(t, name, "nft", "flush", "table", "inet", "localdns")
	rep, err = Reconcile(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Reconcile after address deleted and table flushed: %s", rep)
	if rep.Addresses != 1 || rep.Rules != 1 || rep.Link != 0 {
		t.Errorf("Reconcile repairs %+v, want 1 address and 1 rules", rep)
	}
	check("after reconcile")

	// A foreign rule in our table is replaced too; the link set down comes up.
	inNS(t, name, "nft", "add", "rule", "inet", "localdns", "output", "udp", "dport", "5353", "accept")
	inNS(t, name, "ip", "link", "set", res.Link, "down")
	// The kernel drops IPv6 addresses of a link that goes down (unless
	// keep_addr_on_down): those come back too.
	missing := 0
	on := addrsOn(t, ns, res.Link)
	for _, a := range cfg.Addrs {
		if on[a] == 0 {
			missing++
		}
	}
	rep, err = Reconcile(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Reconcile after foreign rule and link down: %s", rep)
	if rep.Rules != 1 || rep.Link != 1 || rep.Addresses != missing {
		t.Errorf("Reconcile repairs %+v, want 1 link, 1 rules and %d addresses", rep, missing)
	}
	check("after second reconcile")
	if rep, err := Reconcile(context.Background(), cfg); err != nil || rep.Total() != 0 {
		t.Errorf("Reconcile after repairs: %+v, %v", rep, err)
	}

	for what, want := range map[string]float64{RepairAddress: float64(1 + missing), RepairRules: 2, RepairLink: 1} {
		if got := counterValue(t, cfg.Metrics.repairs.WithLabelValues(what)); got != want {
			t.Errorf("localdns_reconcile_repairs_total{what=%q} = %v, want %v", what, got, want)
		}
	}

	for i := range 2 {
		if err := Teardown(cfg); err != nil {
			t.Fatalf("Teardown #%d: %v", i+1, err)
		}
		if after := snapshot(t, name); after != before {
			t.Errorf("after Teardown #%d the namespace differs:\nbefore:\n%s\nafter:\n%s", i+1, before, after)
		}
	}
	if _, err := os.Stat(statePath(cfg)); !os.IsNotExist(err) {
		t.Errorf("state file still there after Teardown: %v", err)
	}
	if got := counterValue(t, cfg.Metrics.errors.WithLabelValues(StepTeardown)); got != 0 {
		t.Errorf("setup errors counted: %v", got)
	}
}

// TestTeardownLeavesForeignAddresses: addresses on lo that we did not add stay,
// with and without the state file (the SIGKILL case).
func TestTeardownLeavesForeignAddresses(t *testing.T) {
	for _, withState := range []bool{true, false} {
		t.Run(map[bool]string{true: "state file", false: "no state file"}[withState], func(t *testing.T) {
			ns, name := newNS(t)
			// Someone else's addresses on lo: one equal to a listener, one not.
			inNS(t, name, "ip", "addr", "add", "169.254.10.10/32", "dev", "lo")
			inNS(t, name, "ip", "addr", "add", "169.254.20.20/32", "dev", "lo")
			before := snapshot(t, name)

			cfg := Config{
				Addrs:    []netip.Addr{nodeListener, clusterListener},
				StateDir: t.TempDir(),
				NetNS:    ns,
			}
			res, err := EnsureAddresses(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Link != "lo" {
				t.Skipf("kernel has a dummy link type; the lo edge does not arise (addresses on %s)", res.Link)
			}
			if len(res.Added) != 1 || res.Added[0] != clusterListener {
				t.Errorf("Added %v, want only %s (the other was there)", res.Added, clusterListener)
			}
			if err := EnsureRules(cfg); err != nil {
				t.Fatal(err)
			}
			if !withState {
				// What a SIGKILL and a wiped state dir leave: no record.
				if err := os.Remove(statePath(cfg)); err != nil {
					t.Fatal(err)
				}
			}
			if err := Teardown(cfg); err != nil {
				t.Fatal(err)
			}
			if after := snapshot(t, name); after != before {
				t.Errorf("Teardown changed more or less than ours:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestConfigChange: an address dropped from the configuration is removed, a
// renamed table replaces the old one.
func TestConfigChange(t *testing.T) {
	ns, name := newNS(t)
	before := snapshot(t, name)
	cfg := Config{Addrs: []netip.Addr{nodeListener, clusterListener}, StateDir: t.TempDir(), NetNS: ns}
	if _, err := EnsureAddresses(cfg); err != nil {
		t.Fatal(err)
	}
	if err := EnsureRules(cfg); err != nil {
		t.Fatal(err)
	}

	// Same number of rules, other content: Reconcile sees the difference.
	cfg.Port = 5353
	rep, err := Reconcile(context.Background(), cfg)
	if err != nil || rep.Rules != 1 {
		t.Errorf("Reconcile after a port change: %+v, %v; want the table rebuilt", rep, err)
	}
	if listing := inNS(t, name, "nft", "list", "table", "inet", "localdns"); !strings.Contains(listing, "udp dport 5353") || strings.Contains(listing, "udp dport 53 ") {
		t.Errorf("table after port change:\n%s", listing)
	}
	// One more listener wants more rules.
	cfg.ReplyNotrack = true
	if rep, err := Reconcile(context.Background(), cfg); err != nil || rep.Rules != 1 {
		t.Errorf("Reconcile after switching reply notrack on: %+v, %v; want the table rebuilt", rep, err)
	}

	cfg.Addrs = []netip.Addr{nodeListener}
	cfg.Table = "localdns2"
	res, err := EnsureAddresses(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0] != clusterListener || len(res.Added) != 0 {
		t.Errorf("after dropping %s: %+v", clusterListener, res)
	}
	if on := addrsOn(t, ns, res.Link); on[clusterListener] != 0 || on[nodeListener] != 1 {
		t.Errorf("addresses on %s: %v", res.Link, on)
	}
	if err := EnsureRules(cfg); err != nil {
		t.Fatal(err)
	}
	ruleset := inNS(t, name, "nft", "list", "tables")
	if strings.Contains(ruleset, "inet localdns\n") || !strings.Contains(ruleset, "inet localdns2\n") {
		t.Errorf("tables after rename:\n%s", ruleset)
	}
	if err := Teardown(cfg); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, name); after != before {
		t.Errorf("namespace differs after Teardown:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestForeignLinkNotTouched: a link named like ours that is not a dummy link is
// someone else's: EnsureAddresses refuses it and Teardown leaves it.
func TestForeignLinkNotTouched(t *testing.T) {
	ns, name := newNS(t)
	inNS(t, name, "ip", "link", "add", "localdns", "type", "veth", "peer", "name", "other0")
	before := snapshot(t, name)
	cfg := Config{Addrs: []netip.Addr{nodeListener}, StateDir: t.TempDir(), NetNS: ns}
	if _, err := EnsureAddresses(cfg); err == nil || !strings.Contains(err.Error(), "not dummy") {
		t.Errorf("EnsureAddresses with a veth named localdns: got %v, want a refusal", err)
	}
	if err := Teardown(cfg); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, name); after != before {
		t.Errorf("namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
