package fastpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// echoCache answers every query of its zone with the query itself, QR set
// and the answer count holding 0xfa: a reply the test can tell apart from
// the ones its server loop writes for misses (0x5e).
type echoCache struct{}

func (echoCache) AnswerWire(query []byte, tcp bool, out []byte) int {
	n := copy(out, query)
	out[2] |= 0x80
	out[6], out[7] = 0, 0xfa
	return n
}

// serveConn runs the server side as CoreDNS's read loop does: every query
// the fast path returns is answered with WriteTo, marked 0x5e.
func serveConn(t testing.TB, network, addr string) (*Conn, string) {
	return serveConnObserved(t, network, addr, nil)
}

// serveConnObserved is serveConn with obs told of the hits of "fast.".
func serveConnObserved(t testing.TB, network, addr string, obs HitObserver) (*Conn, string) {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("no %s socket on %s: %v", network, addr, err)
	}
	tab := &Table{zones: map[string]zone{"fast.": {echoCache{}, obs}, ".": {}}, counter: answers.WithLabelValues("test")}
	c, ok := Wrap(pc.(*net.UDPConn), tab, nil).(*Conn)
	if !ok {
		t.Fatal("Wrap did not put the fast path in front")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			reply := append([]byte(nil), buf[:n]...)
			reply[2] |= 0x80
			reply[6], reply[7] = 0, 0x5e
			c.WriteTo(reply, from)
		}
	}()
	t.Cleanup(func() {
		c.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("ReadFrom did not return after Close")
		}
	})
	return c, c.LocalAddr().String()
}

// TestConnAnswersHitsAndPassesMisses sends bursts of hits and misses from
// several clients (more than one batch queued at once) and checks that each
// client gets exactly its own answers: hits from the cache, misses from the
// server loop with the client's address intact.
func TestConnAnswersHitsAndPassesMisses(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			_, server := serveConn(t, tc.network, tc.addr)
			const clients, perClient = 3, 70 // 210 queries: several batches of 32
			conns := make([]net.Conn, clients)
			for i := range conns {
				c, err := net.Dial(tc.network, server)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns[i] = c
			}
			for q := range perClient {
				for i, c := range conns {
					m := new(dns.Msg)
					zone := "fast."
					if q%3 == 0 {
						zone = "slow." // a miss: through the server loop
					}
					m.SetQuestion(fmt.Sprintf("q%d.%s", q, zone), dns.TypeA)
					m.Id = uint16(i<<8 | q)
					b, _ := m.Pack()
					if _, err := c.Write(b); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, c := range conns {
				seen := map[uint16]bool{}
				buf := make([]byte, 512)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				for len(seen) < perClient {
					n, err := c.Read(buf)
					if err != nil {
						t.Fatalf("client %d: %d of %d answers: %v", i, len(seen), perClient, err)
					}
					if n < 12 {
						t.Fatalf("client %d: %d-byte answer", i, n)
					}
					id := uint16(buf[0])<<8 | uint16(buf[1])
					if int(id>>8) != i {
						t.Fatalf("client %d got an answer for client %d", i, id>>8)
					}
					q := int(id & 0xff)
					want := byte(0xfa)
					if q%3 == 0 {
						want = 0x5e
					}
					if buf[7] != want || buf[2]&0x80 == 0 {
						t.Fatalf("client %d query %d: answered by %#x, want %#x", i, q, buf[7], want)
					}
					if seen[id] {
						t.Fatalf("client %d query %d answered twice", i, q)
					}
					seen[id] = true
				}
			}
		})
	}
}

// TestSendSkipsRefusedDatagram: a datagram the kernel refuses (here: to
// port 0) is dropped, and the answers after it in the batch still go out.
func TestSendSkipsRefusedDatagram(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	raw, err := srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	b := newBatch(3, 64)
	to := func(i int, port int, payload string) {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.names[i]))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: [4]byte{127, 0, 0, 1}}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		b.iovs[i].SetLen(copy(b.bufs[i], payload))
	}
	port := client.LocalAddr().(*net.UDPAddr).Port
	to(0, port, "one")
	to(1, 0, "refused")
	to(2, port, "three")
	b.send(raw, 3)
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	for _, want := range []string{"one", "three"} {
		n, from, err := client.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if string(buf[:n]) != want || from.Port != srv.LocalAddr().(*net.UDPAddr).Port {
			t.Fatalf("got %q from %v, want %q from the server", buf[:n], from, want)
		}
	}
}

// hitLog is a HitObserver that keeps what it is told.
type hitLog struct {
	mu   sync.Mutex
	hits []string // "client name rcode"
}

func (l *hitLog) ObserveHit(client netip.Addr, name []byte, rcode int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hits = append(l.hits, fmt.Sprintf("%s %s %d", client, name, rcode))
}

func (l *hitLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.hits)
}

// TestConnReportsHitsWithClientAddress: every answer the fast path sends is
// reported to the block's observer with the client's address and the
// lower-cased name; misses are not (the plugin chain accounts for those).
func TestConnReportsHitsWithClientAddress(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			log := &hitLog{}
			_, server := serveConnObserved(t, tc.network, tc.addr, log)
			c, err := net.Dial(tc.network, server)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			client := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
			var want []string
			buf := make([]byte, 512)
			for i, name := range []string{"A.Fast.", "slow.", "b.fast."} {
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				b, _ := m.Pack()
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(buf); err != nil {
					t.Fatalf("query %d: %v", i, err)
				}
				if name != "slow." {
					want = append(want, fmt.Sprintf("%s %s 0", client, strings.ToLower(name)))
				}
			}
			if got := log.snapshot(); !slices.Equal(got, want) {
				t.Fatalf("observed %q, want %q", got, want)
			}
		})
	}
}

// TestReadFromAfterClose: closing the socket (a server shutting down) ends
// the read loop with net.ErrClosed, as with a plain UDPConn.
func TestReadFromAfterClose(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := Wrap(pc, &Table{zones: map[string]zone{".": {wa: echoCache{}}}, counter: answers.WithLabelValues("test")}, nil)
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(make([]byte, 512))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrom after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrom still blocked after Close")
	}
}
