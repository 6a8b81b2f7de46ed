package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

// TestReloadClosesMovedListener: a reload that moves a listener to another
// port closes the old port's sockets (a UDP query there is refused at once,
// a TCP connect is refused) instead of leaving them bound and unread, where
// queries vanish into the socket's queue; the new port answers; a listener
// that stayed loses no query across the reload.
func TestReloadClosesMovedListener(t *testing.T) {
	up := testdns.Start(t, "192.0.2.40")
	ports := testbin.FreePorts(t, 3, "127.0.0.1", "127.0.0.3")
	oldPort, newPort, stayPort := ports[0], ports[1], ports[2]
	path := filepath.Join(t.TempDir(), "Corefile")
	write := func(moving int) {
		text := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    frontend
    forward . %s
}
.:%d {
    bind 127.0.0.3
    frontend
    forward . %s
}
`, moving, up.Addr, stayPort, up.Addr)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(oldPort)
	d, err := Start(context.Background(), Options{CorefilePath: path, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	oldAddr := fmt.Sprintf("127.0.0.1:%d", oldPort)
	newAddr := fmt.Sprintf("127.0.0.1:%d", newPort)
	stayAddr := fmt.Sprintf("127.0.0.3:%d", stayPort)
	testdns.Query(t, "udp", oldAddr, "before.example.", dns.TypeA)

	// Hammer the listener that stays while reloading.
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if _, err := testdns.Exchange("udp", stayAddr, fmt.Sprintf("s%d-%d.example.", w, i), dns.TypeA); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	write(newPort)
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d queries to the listener that stayed failed across the reload", failed.Load(), sent.Load())
	}

	testdns.Query(t, "udp", newAddr, "new.example.", dns.TypeA)
	testdns.Query(t, "tcp", newAddr, "new.example.", dns.TypeA)

	// The old port: nothing bound, so the kernel refuses.
	c, err := net.Dial("udp", oldAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion("old.example.", dns.TypeA)
	b, _ := q.Pack()
	start := time.Now()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 512)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UDP query to the old port after the reload: %v after %s, want connection refused", err, time.Since(start))
	}
	if tc, err := net.DialTimeout("tcp", oldAddr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		if tc != nil {
			tc.Close()
		}
		t.Fatalf("TCP connect to the old port after the reload: %v, want connection refused", err)
	}
	if got := len(d.owner.Addresses()); got != 2 {
		t.Fatalf("localdns owns sockets of %d addresses after the move, want 2: %v", got, d.owner.Addresses())
	}
}
