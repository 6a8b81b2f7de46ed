package nodecache

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	full := `nodecache {
    max_ttl 600
    denial_ttl 30
    serve_stale verify 1800
    verify_timeout 500ms
    prefetch 0
    max_udp_size 4096
    memory 16777216
    snapshot /var/lib/localdns/cache.snapshot 30s
    pin Example.org mcr.microsoft.com.
    pin packages.aks.azure.com
    pin_refresh 30s
}`
	cfg, err := parse(caddy.NewTestController("dns", full))
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		policy: policy{maxTTL: 600, denialTTL: 30, mode: staleVerify, staleWindow: 1800, verifyTimeout: 500 * time.Millisecond, prefetch: 0, maxUDP: 4096},
		memory: 16 << 20, snapshotPath: "/var/lib/localdns/cache.snapshot", snapshotEvery: 30 * time.Second,
		pins: [][]byte{
			[]byte("\x07example\x03org\x00"),
			[]byte("\x03mcr\x09microsoft\x03com\x00"),
			[]byte("\x08packages\x03aks\x05azure\x03com\x00"),
		},
		pinRefresh: 30 * time.Second,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	def, err := parse(caddy.NewTestController("dns", "nodecache"))
	if err != nil || !reflect.DeepEqual(def, defaultConfig()) || def.pinRefresh != 15*time.Minute {
		t.Fatalf("defaults: %+v %v", def, err)
	}
	if c, err := parse(caddy.NewTestController("dns", "nodecache {\n serve_stale off\n}")); err != nil || c.mode != staleOff || c.staleWindow != 0 {
		t.Fatalf("serve_stale off: %+v %v", c, err)
	}
	if c, err := parse(caddy.NewTestController("dns", "nodecache {\n serve_stale immediate\n}")); err != nil || c.staleWindow != defaultStaleWindow {
		t.Fatalf("serve_stale immediate without window: %+v %v", c, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nodecache example.org", "Wrong argument count"},
		{"nodecache {\n bogus 1\n}", "unknown property"},
		{"nodecache {\n max_ttl -1\n}", "max_ttl"},
		{"nodecache {\n max_ttl 99999999\n}", "limit"},
		{"nodecache {\n denial_ttl\n}", "denial_ttl"},
		{"nodecache {\n serve_stale sometimes 10\n}", "unknown mode"},
		{"nodecache {\n serve_stale off 10\n}", "takes no window"},
		{"nodecache {\n serve_stale immediate 0\n}", "positive"},
		{"nodecache {\n verify_timeout soon\n}", "verify_timeout"},
		{"nodecache {\n verify_timeout 0s\n}", "positive"},
		{"nodecache {\n prefetch many\n}", "prefetch"},
		{"nodecache {\n memory 1000\n}", "at least"},
		{"nodecache {\n max_udp_size 511\n}", "at least 512"},
		{"nodecache {\n max_udp_size 65536\n}", "max_udp_size"},
		{"nodecache {\n max_udp_size\n}", "Wrong argument count"},
		{"nodecache {\n snapshot\n}", "Wrong argument count"},
		{"nodecache {\n snapshot /x 10ms\n}", "at least 1s"},
		{"nodecache {\n pin\n}", "at least one name"},
		{"nodecache {\n pin .\n}", "not a domain name"},
		{"nodecache {\n pin a..b\n}", "not a domain name"},
		{"nodecache {\n pin_refresh 10ms\n}", "at least 100ms"},
		{"nodecache {\n pin_refresh soon\n}", "pin_refresh"},
		{"nodecache {\n pin_refresh\n}", "Wrong argument count"},
	} {
		_, err := parse(caddy.NewTestController("dns", tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.in, err, tc.want)
		}
	}
}

func TestProcessWideSettingsMustAgree(t *testing.T) {
	s := &instanceSettings{memory: 1 << 24, snapshotPath: "/a", snapshotEvery: time.Minute}
	if err := s.merge(config{memory: 1 << 25}); err == nil || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("memory mismatch: %v", err)
	}
	if err := s.merge(config{memory: 1 << 24, snapshotPath: "/b", snapshotEvery: time.Minute}); err == nil {
		t.Fatal("snapshot path mismatch accepted")
	}
	if err := s.merge(config{memory: 1 << 24}); err != nil {
		t.Fatalf("block without snapshot: %v", err)
	}
	empty := &instanceSettings{memory: 1 << 24}
	if err := empty.merge(config{memory: 1 << 24, snapshotPath: "/c", snapshotEvery: time.Minute}); err != nil || empty.snapshotPath != "/c" {
		t.Fatalf("snapshot from a later block: %+v %v", empty, err)
	}
}
