package hostdns

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNS creates an anonymous network namespace with lo up and returns a
// netlink handle in it; both go when the test ends. The calling thread's
// namespace is left as it was.
func newNS(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace with veth links and routes")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	ns, nerr := netns.New()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it with the goroutine.
		t.Fatalf("restoring netns: %v", err)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if nerr != nil {
		t.Fatalf("new netns: %v", nerr)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns, h
}

// uplink adds a veth pair name/name-peer, both ends up in the namespace,
// with addr on name, and returns name's index.
func uplink(t *testing.T, h *netlink.Handle, name, addr string) int {
	t.Helper()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "-p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, n := range []string{name, name + "-p"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := h.LinkByName(name)
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("address %s on %s: %v", addr, name, err)
	}
	return l.Attrs().Index
}

func defaultRoute(index int, gw string, metric int) *netlink.Route {
	return &netlink.Route{LinkIndex: index, Gw: net.ParseIP(gw), Priority: metric}
}

func TestDefaultRouteLink(t *testing.T) {
	ns, h := newNS(t)
	cfg := Config{NetNS: ns}
	if _, err := DefaultRouteLink(cfg); err == nil {
		t.Fatal("no error without a default route")
	}

	eth0 := uplink(t, h, "eth0", "10.1.0.2/24")
	eth1 := uplink(t, h, "eth1", "10.2.0.2/24")
	v6 := uplink(t, h, "eth6", "fd00:6::2/64")

	// IPv6 only: the IPv6 default route.
	if err := h.RouteAdd(defaultRoute(v6, "fd00:6::1", 100)); err != nil {
		t.Fatal(err)
	}
	if l, err := DefaultRouteLink(cfg); err != nil || l.Name != "eth6" || l.Index != v6 {
		t.Errorf("IPv6 only: %+v, %v; want eth6", l, err)
	}

	// IPv4 wins over IPv6; the lowest metric wins.
	r0 := defaultRoute(eth0, "10.1.0.1", 100)
	r1 := defaultRoute(eth1, "10.2.0.1", 50)
	for _, r := range []*netlink.Route{r0, r1} {
		if err := h.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := DefaultRouteLink(cfg); err != nil || l.Name != "eth1" || l.Index != eth1 {
		t.Errorf("metrics 100 (eth0) and 50 (eth1): %+v, %v; want eth1", l, err)
	}
	if err := h.RouteDel(r1); err != nil {
		t.Fatal(err)
	}
	if l, err := DefaultRouteLink(cfg); err != nil || l.Name != "eth0" {
		t.Errorf("after deleting eth1's route: %+v, %v; want eth0", l, err)
	}

	// A blackhole default route with a lower metric is not a link.
	bh := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Type: unix.RTN_BLACKHOLE, Priority: 1}
	if err := h.RouteAdd(bh); err != nil {
		t.Fatal(err)
	}
	if l, err := DefaultRouteLink(cfg); err != nil || l.Name != "eth0" {
		t.Errorf("with a blackhole default: %+v, %v; want eth0", l, err)
	}
}

// Redirect and Revert end to end in a namespace whose default route goes
// out eth0, which networkd manages.
func TestRedirectDefaultRouteLink(t *testing.T) {
	ns, h := newNS(t)
	eth0 := uplink(t, h, "eth0", "10.1.0.2/24")
	uplink(t, h, "eth1", "10.2.0.2/24")
	if err := h.RouteAdd(defaultRoute(eth0, "10.1.0.1", 1024)); err != nil {
		t.Fatal(err)
	}

	f := newFakeHost(t)
	f.cfg.Interface = ""
	f.cfg.NetNS = ns
	f.reportsDropIns = true
	f.manage(eth0, "/run/systemd/network/10-netplan-eth0.network")
	eth1, _ := h.LinkByName("eth1")
	f.manage(eth1.Attrs().Index, "/run/systemd/network/10-netplan-eth1.network")

	a, err := Redirect(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(f.cfg.NetworkRunDir, "10-netplan-eth0.network.d", DropInName)
	if a.Interface != "eth0" || a.IfIndex != eth0 || a.Path != want {
		t.Errorf("Applied = %+v", a)
	}
	if got := readFile(t, want); got != golden(t, "networkd.conf") {
		t.Errorf("drop-in:\n%s", got)
	}
	st, err := readLinkState(filepath.Join(f.cfg.NetifLinksDir, strconv.Itoa(eth0)))
	if err != nil || !slices.Equal(st.DropIns, []string{want}) {
		t.Errorf("networkd (fake) applies %v, %v", st.DropIns, err)
	}
	if got := f.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
		t.Errorf("reloads %v", got)
	}
	if r, err := Revert(f.cfg); err != nil || !slices.Equal(r.Removed, []string{want}) {
		t.Errorf("Revert = %+v, %v", r, err)
	}
	mustNotExist(t, want)
}
