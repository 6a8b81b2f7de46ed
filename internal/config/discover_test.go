package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeResolvConf writes a resolv.conf into the test's directory. Discovery
// only reads files; no test here sends a query anywhere.
func writeResolvConf(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func upstreams(s ...string) []Upstream {
	out := make([]Upstream, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}

var ownListeners = []netip.Addr{netip.MustParseAddr("169.254.10.10"), netip.MustParseAddr("169.254.10.11")}

func TestDiscoverDropsListenersAndStubs(t *testing.T) {
	path := writeResolvConf(t, "resolv.conf", `# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).
nameserver 169.254.10.10
nameserver 10.224.0.4
nameserver 127.0.0.53
search abc.internal.cloudapp.net
options edns0 trust-ad
nameserver 169.254.10.11
	nameserver   10.224.0.5   # tab, spaces and a trailing comment
nameserver 10.224.0.4
nameserver fe80::1%eth0
nameserver 2001:db8::53
nameserver 127.0.0.54
nameserver not-an-ip
nameserver
; nameserver 10.9.9.9
`)
	got, src, err := DiscoverVNetDNS([]string{path}, ownListeners...)
	if err != nil {
		t.Fatal(err)
	}
	want := upstreams("10.224.0.4:53", "10.224.0.5:53", "[2001:db8::53]:53")
	if !reflect.DeepEqual(got, want) || src != path {
		t.Errorf("got %v from %s, want %v from %s", got, src, want, path)
	}
}

func TestDiscoverFallsBack(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "run-systemd-resolve-resolv.conf")
	classic := writeResolvConf(t, "etc-resolv.conf", "nameserver 10.1.0.4\n")

	got, src, err := DiscoverVNetDNS([]string{missing, classic}, ownListeners...)
	if err != nil || src != classic || !reflect.DeepEqual(got, upstreams("10.1.0.4:53")) {
		t.Errorf("missing first file: got %v from %q, %v; want 10.1.0.4:53 from the second", got, src, err)
	}

	// A first file that exists but lists only our own listener (the host
	// redirect still in place) and the stub is skipped too.
	looped := writeResolvConf(t, "looped.conf", "nameserver 169.254.10.10\nnameserver 127.0.0.53\n")
	got, src, err = DiscoverVNetDNS([]string{looped, classic}, ownListeners...)
	if err != nil || src != classic || !reflect.DeepEqual(got, upstreams("10.1.0.4:53")) {
		t.Errorf("unusable first file: got %v from %q, %v; want the second file", got, src, err)
	}

	// The first usable file wins; later files are not read.
	first := writeResolvConf(t, "first.conf", "nameserver 10.2.0.4\n")
	got, src, _ = DiscoverVNetDNS([]string{first, classic}, ownListeners...)
	if src != first || !reflect.DeepEqual(got, upstreams("10.2.0.4:53")) {
		t.Errorf("got %v from %q, want the first file", got, src)
	}
}

func TestDiscoverErrorsWhenNothingUsable(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.conf")
	stubOnly := writeResolvConf(t, "stub.conf", "nameserver 127.0.0.53\nsearch example\n")
	ours := writeResolvConf(t, "ours.conf", "nameserver 169.254.10.11\n")
	empty := writeResolvConf(t, "empty.conf", "")

	_, _, err := DiscoverVNetDNS([]string{missing, stubOnly, ours, empty}, ownListeners...)
	if err == nil {
		t.Fatal("discovery succeeded with no usable nameserver")
	}
	msg := err.Error()
	for _, want := range []string{
		"no VNet DNS server found",
		missing + " does not exist",
		stubOnly + " lists no usable nameserver (found [127.0.0.53])",
		ours + " lists no usable nameserver (found [169.254.10.11])",
		empty + " lists no usable nameserver (found [])",
		"169.254.10.10", // the listeners skipped are named
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}

	if _, _, err := DiscoverVNetDNS(nil); err == nil {
		t.Error("discovery with no file succeeded")
	}
	// A directory is unreadable as a file: reported, not fatal for the rest.
	got, _, err := DiscoverVNetDNS([]string{dir, writeResolvConf(t, "ok.conf", "nameserver 10.3.0.4")})
	if err != nil || !reflect.DeepEqual(got, upstreams("10.3.0.4:53")) {
		t.Errorf("after an unreadable path: %v %v", got, err)
	}
}

// TestProfileResolvConf drives discovery through the profile: resolvConf
// names the files, the profile's listeners are dropped.
func TestProfileResolvConf(t *testing.T) {
	first := filepath.Join(t.TempDir(), "absent.conf")
	second := writeResolvConf(t, "resolv.conf", "nameserver 127.0.0.21\nnameserver 127.0.0.22\nnameserver 127.0.0.53\nnameserver 192.0.2.7\n")
	p := mustParse(t, fmt.Sprintf(`
listeners: {node: 127.0.0.21, cluster: 127.0.0.22}
clusterDNS: [127.0.0.30]
vnetDNS: auto
resolvConf: [%s, %s]
`, first, second))
	u, err := p.ResolveUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(u.VNet, upstreams("192.0.2.7:53")) || u.VNetSource != second {
		t.Errorf("VNet %v from %q, want 192.0.2.7:53 from %s", u.VNet, u.VNetSource, second)
	}
	if !reflect.DeepEqual(u.Cluster, upstreams("127.0.0.30:53")) {
		t.Errorf("cluster %v", u.Cluster)
	}

	// clusterDNS auto follows the discovered servers.
	p.ClusterDNSAuto, p.ClusterDNS = true, nil
	u, err = p.ResolveUpstreams()
	if err != nil || !reflect.DeepEqual(u.Cluster, u.VNet) {
		t.Errorf("auto cluster %v, VNet %v, %v", u.Cluster, u.VNet, err)
	}

	// Nothing usable: the error says discovery failed and why.
	p.ResolvConf = []string{writeResolvConf(t, "only-us.conf", "nameserver 127.0.0.21\n")}
	if _, err := p.ResolveUpstreams(); err == nil || !strings.Contains(err.Error(), "discover VNet DNS") || !strings.Contains(err.Error(), "only-us.conf lists no usable nameserver") {
		t.Errorf("ResolveUpstreams error %v", err)
	}

	// Explicit servers never read a file.
	p = mustParse(t, "vnetDNS: [192.0.2.8]\nresolvConf: /nonexistent/resolv.conf\n")
	u, err = p.ResolveUpstreams()
	if err != nil || !reflect.DeepEqual(u.VNet, upstreams("192.0.2.8:53")) || u.VNetSource != "" {
		t.Errorf("explicit vnetDNS: %+v %v", u, err)
	}
}
