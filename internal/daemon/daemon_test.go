package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

func writeCorefile(t *testing.T, path string, port int, upstream string) {
	t.Helper()
	text := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    frontend
    forward . %s
}
`, port, upstream)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFrontendServesAndReloadsWithoutLoss runs a hand-written Corefile with
// the frontend directive: localdns owns the socket, a reload swaps the
// upstream, and a client hammering the listener during reloads sees every
// query answered.
func TestFrontendServesAndReloadsWithoutLoss(t *testing.T) {
	a := testdns.Start(t, "192.0.2.1")
	b := testdns.Start(t, "192.0.2.2")
	port := testbin.FreePorts(t, 1)[0]
	path := filepath.Join(t.TempDir(), "Corefile")
	writeCorefile(t, path, port, a.Addr)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	d, err := Start(context.Background(), Options{CorefilePath: path, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()

	r := testdns.Query(t, "udp", addr, "one.example.", dns.TypeA)
	if got := r.Answer[0].(*dns.A).A.String(); got != "192.0.2.1" {
		t.Fatalf("answer from %s, want upstream a", got)
	}
	if got := owned(d); got != 1 {
		t.Fatalf("localdns owns %d sockets, want 1 (caddy must not serve the real address)", got)
	}

	// Hammer the listener over UDP while reloading a few times.
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if _, err := testdns.Exchange("udp", addr, fmt.Sprintf("n%d-%d.example.", w, i), dns.TypeA); err != nil {
					failed.Add(1)
				}
			}
		}(w)
	}
	for i := 0; i < 3; i++ {
		time.Sleep(150 * time.Millisecond)
		up := b.Addr
		if i%2 == 1 {
			up = a.Addr
		}
		writeCorefile(t, path, port, up)
		if err := d.Reload(); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d queries failed across reloads", failed.Load(), sent.Load())
	}
	t.Logf("%d queries across 3 reloads, none lost", sent.Load())
	r = testdns.Query(t, "udp", addr, "two.example.", dns.TypeA)
	if got := r.Answer[0].(*dns.A).A.String(); got != "192.0.2.2" {
		t.Fatalf("after reload answer from %s, want upstream b", got)
	}

	// A broken Corefile is refused and the running one keeps serving.
	if err := os.WriteFile(path, []byte(".:x { nonsense }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err == nil {
		t.Fatal("reload of a broken Corefile succeeded")
	}
	testdns.Query(t, "tcp", addr, "three.example.", dns.TypeA)
}

func owned(d *Daemon) int { return len(d.owner.Addresses()) }

func TestSocketBoundReadsProcNet(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(pc.LocalAddr().String())
	if got, err := socketBound(ap); err != nil || got != "udp" {
		t.Fatalf("bound udp socket: got %q, %v", got, err)
	}
	pc.Close()
	if got, err := socketBound(ap); err != nil || got != "" {
		t.Fatalf("closed socket: got %q, %v", got, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got, _ := socketBound(netip.MustParseAddrPort(ln.Addr().String())); got != "tcp" {
		t.Fatalf("listening tcp socket: got %q", got)
	}
}

func gatherSum(t *testing.T, name string) float64 {
	t.Helper()
	fams, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				total += metricValue(m)
			}
		}
	}
	return total
}

// TestFastPathAnswersHits checks that cache hits are answered at the socket
// (the fast-path counter moves, the upstream is not asked again) with the
// client's ID and question casing, and a TTL that counts down.
func TestFastPathAnswersHits(t *testing.T) {
	up := testdns.Start(t, "192.0.2.7")
	port := testbin.FreePorts(t, 1)[0]
	path := filepath.Join(t.TempDir(), "Corefile")
	text := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    frontend
    nodecache {
        max_ttl 3600
        denial_ttl 3600
        serve_stale immediate 3600
        memory 8388608
    }
    forward . %s
}
`, port, up.Addr)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Start(context.Background(), Options{CorefilePath: path, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	testdns.Query(t, "udp", addr, "fast.example.", dns.TypeA) // miss: fills the cache
	before := gatherSum(t, "localdns_fastpath_answers_total")
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	for i := 0; i < 20; i++ {
		m := new(dns.Msg)
		m.SetQuestion("FaSt.ExAmPlE.", dns.TypeA)
		m.Id = uint16(1000 + i)
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatal(err)
		}
		if r.Id != m.Id || r.Question[0].Name != "FaSt.ExAmPlE." || len(r.Answer) != 1 {
			t.Fatalf("hit answered id %d question %q answers %d", r.Id, r.Question[0].Name, len(r.Answer))
		}
		if ttl := r.Answer[0].Header().Ttl; ttl > 300 || ttl < 290 {
			t.Fatalf("hit TTL %d, want the upstream's 300 counted down", ttl)
		}
	}
	if got := gatherSum(t, "localdns_fastpath_answers_total") - before; got != 20 {
		t.Fatalf("fast path answered %v of 20 hits", got)
	}
	if n := up.Count("fast.example."); n != 1 {
		t.Fatalf("upstream asked %d times, want 1", n)
	}
	// TCP goes through CoreDNS's server and the cache as usual.
	if r := testdns.Query(t, "tcp", addr, "fast.example.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("tcp hit: %v", r)
	}

	// Idle past the server's read deadline (3 s): the batched read times
	// out, and the server must keep reading rather than stop serving UDP.
	time.Sleep(3500 * time.Millisecond)
	before = gatherSum(t, "localdns_fastpath_answers_total")
	if r := testdns.Query(t, "udp", addr, "fast.example.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("hit after idling: %v", r)
	}
	if got := gatherSum(t, "localdns_fastpath_answers_total") - before; got != 1 {
		t.Fatalf("after idling, the fast path answered %v of 1 hit", got)
	}
}
