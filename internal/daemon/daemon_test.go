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

	"github.com/localdns/localdns/internal/testdns"
)

func freePort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

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
	port := freePort(t)
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
