package nodecache_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"

	"github.com/localdns/localdns/plugin/nodecache"
)

// TestWarmRestartWithUpstreamDown is the product promise: names cached
// before a restart are answered after it even though every upstream is
// down, from the snapshot written at shutdown.
func TestWarmRestartWithUpstreamDown(t *testing.T) {
	freshStore(t)
	up := startUpstream(t, func(r *dns.Msg) *dns.Msg {
		ttl := uint32(30)
		if r.Question[0].Name == "long.example.org." {
			ttl = 3600
		}
		return aAnswer("192.0.2.90", ttl)(r)
	})
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	cf := corefile(up, fmt.Sprintf("    serve_stale immediate 3600\n    snapshot %s 60s", path))
	first := startServer(t, cf)
	for _, name := range []string{"short.example.org.", "long.example.org."} {
		ask(t, first.addr(0), name, qopt{})
	}
	first.stop() // ShutdownCallbacks (final snapshot) + Stop
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no snapshot after shutdown: %v", err)
	}
	up.stop()

	// A new process: an empty store, 60 s later, every upstream down.
	clock := freshStore(t)
	clock.set(60 * time.Second)
	second := startServer(t, cf)
	if got := gaugeValue(t, nodecache.SnapshotRestored); got != 2 {
		t.Fatalf("restored %v entries, want 2", got)
	}
	m := ask(t, second.addr(0), "short.example.org.", qopt{edns: 1232})
	if code, ok := ede(m); !ok || code != dns.ExtendedErrorCodeStaleAnswer || len(m.Answer) != 1 || m.Answer[0].Header().Ttl != nodecache.StaleTTL {
		t.Fatalf("expired name after restart: %v", m)
	}
	if !m.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.90")) {
		t.Fatalf("wrong data after restart: %v", m.Answer)
	}
	m = ask(t, second.addr(0), "long.example.org.", qopt{edns: 1232})
	if _, stale := ede(m); stale || m.Answer[0].Header().Ttl > 3540 || m.Answer[0].Header().Ttl < 3539 {
		t.Fatalf("fresh name after restart did not keep its age: %v", m)
	}
	// Never cached: the upstream is down, so SERVFAIL.
	if m := ask(t, second.addr(0), "new.example.org.", qopt{}); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("uncached name with upstream down: %v", m)
	}
}

// TestDamagedSnapshotIsIgnored: whatever is at the snapshot path, the
// server starts at once with an empty cache, answers, and replaces it with
// a good snapshot at shutdown. A FIFO used to block the start for good, a
// link to /dev/zero to read a gigabyte first.
func TestDamagedSnapshotIsIgnored(t *testing.T) {
	up := startUpstream(t, aAnswer("192.0.2.91", 300))
	write := func(content []byte) func(string) error {
		return func(path string) error { return os.WriteFile(path, content, 0o600) }
	}
	for name, create := range map[string]func(path string) error{
		"garbage":   write([]byte("this is not a snapshot")),
		"truncated": write([]byte("LDNSCACH\x00\x01\x00\x00\x00\x00\x00\x05")),
		"empty":     write([]byte{}),
		"fifo":      func(path string) error { return syscall.Mkfifo(path, 0o600) },
		"dev-zero":  func(path string) error { return os.Symlink("/dev/zero", path) },
	} {
		t.Run(name, func(t *testing.T) {
			freshStore(t)
			path := filepath.Join(t.TempDir(), "cache.snapshot")
			if err := create(path); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			s := startServer(t, corefile(up, "    snapshot "+path))
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("start took %s", took)
			}
			if nodecache.Shared().Len() != 0 {
				t.Fatal("entries restored from a damaged snapshot")
			}
			if m := ask(t, s.addr(0), "ok.example.org.", qopt{}); len(m.Answer) != 1 {
				t.Fatalf("server with a damaged snapshot does not answer: %v", m)
			}
			s.stop()
			// The next save replaced the damaged file with a good one.
			b, err := os.ReadFile(path)
			if err != nil || len(b) < 8 || string(b[:8]) != "LDNSCACH" {
				t.Fatalf("snapshot not rewritten at shutdown: %q %v", b, err)
			}
		})
	}
}

func gaugeValue(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
