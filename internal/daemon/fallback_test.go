package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/netsetup"
)

func fallbackProfile(t *testing.T, extra string) *config.Profile {
	t.Helper()
	p, err := config.Parse([]byte(`mode: Required
clusterDNS: [10.0.0.10, "10.0.0.11:5353", 127.0.0.1, "[fd00::10]:53"]
vnetDNS: [168.63.129.16]
network:
  manage: true
  fallbackFile: ` + filepath.Join(t.TempDir(), "fallback.json") + "\n" + extra))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFallbackRoutes: the node listener goes to the VNet servers, the
// cluster listener to the cluster DNS; loopback (pods cannot be sent
// there) and another family are left out (a listener as an upstream is a
// profile error already); network.fallback: false means no routes.
func TestFallbackRoutes(t *testing.T) {
	p := fallbackProfile(t, "")
	ups, err := p.ResolveUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	want := []netsetup.FallbackRoute{
		{Listener: p.NodeListener, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("168.63.129.16:53")}},
		{Listener: p.ClusterListener, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.10:53"), netip.MustParseAddrPort("10.0.0.11:5353")}},
	}
	if got := fallbackRoutes(p, ups); !reflect.DeepEqual(got, want) {
		t.Errorf("fallbackRoutes = %v, want %v", got, want)
	}
	if got := fallbackRoutes(fallbackProfile(t, "  fallback: false\n"), ups); got != nil {
		t.Errorf("with network.fallback false: %v, want none", got)
	}
}

// TestFallbackFile: what a valid start saves is what a start on a broken
// profile (FallbackConfig(nil) reads the default path, so the test reads
// through loadFallback) installs; a profile that turns the fallback off
// gets an error, not routes.
func TestFallbackFile(t *testing.T) {
	p := fallbackProfile(t, "")
	cfg, from, err := FallbackConfig(p)
	if err != nil || from != "the profile" || len(cfg.Fallback) != 2 {
		t.Fatalf("FallbackConfig(profile) = %+v, %q, %v", cfg, from, err)
	}
	if err := saveFallback(p.Network.FallbackFile, cfg); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p.Network.FallbackFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fallback file: %v, %v", fi, err)
	}
	got, err := loadFallback(p.Network.FallbackFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics = nil
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("loaded %+v, saved %+v", got, cfg)
	}
	if _, _, err := FallbackConfig(fallbackProfile(t, "  fallback: false\n")); err == nil {
		t.Error("FallbackConfig with network.fallback false: no error")
	}
	if err := os.WriteFile(p.Network.FallbackFile, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadFallback(p.Network.FallbackFile); err == nil {
		t.Error("a corrupt fallback file loaded")
	}
}
