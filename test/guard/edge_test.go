package guard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

func packed(t *testing.T, name string, qtype uint16, edit func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edit != nil {
		edit(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawUDP sends b and returns the answer, or nil if none came within wait.
func rawUDP(t *testing.T, addr string, b []byte, wait time.Duration) *dns.Msg {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("answer to %x does not parse: %v", b, err)
	}
	if len(b) >= 2 && m.Id != binary.BigEndian.Uint16(b) {
		t.Fatalf("answer to %x has ID %d", b, m.Id)
	}
	return m
}

// TestMalformedAndUnsupported: the review's cases for odd queries, on the
// running binary, over UDP (fast path and CoreDNS's server both see them).
func TestMalformedAndUnsupported(t *testing.T) {
	a := startAuth(t)
	d := startLocaldns(t, "127.0.46.1", "127.0.46.2", a.addr, "", "")

	for _, l := range []string{d.node, d.pods} {
		// Warm the cache, so that the fast path could answer these.
		testdns.Query(t, "udp", l, "www.diff.test.", dns.TypeA)

		qr := packed(t, "www.diff.test.", dns.TypeA, func(m *dns.Msg) { m.Response = true })
		if m := rawUDP(t, l, qr, 300*time.Millisecond); m != nil {
			t.Errorf("%s: a message with QR=1 was answered: %v", l, m)
		}
		for _, op := range []int{dns.OpcodeIQuery, dns.OpcodeStatus, 3, dns.OpcodeUpdate, 6, 15} {
			q := packed(t, "www.diff.test.", dns.TypeA, func(m *dns.Msg) { m.Opcode = op })
			if m := rawUDP(t, l, q, 2*time.Second); m == nil || m.Rcode != dns.RcodeNotImplemented || m.Opcode != op {
				t.Errorf("%s: opcode %d answered %v, want NOTIMP with the opcode echoed", l, op, m)
			}
		}
		v1 := packed(t, "www.diff.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) })
		if m := rawUDP(t, l, v1, 2*time.Second); m == nil || m.Rcode != dns.RcodeBadVers || m.IsEdns0() == nil || m.IsEdns0().Version() != 0 {
			t.Errorf("%s: EDNS version 1 answered %v, want BADVERS with an OPT of version 0", l, m)
		}
		www := packed(t, "www.diff.test.", dns.TypeA, nil)
		for qd, b := range map[uint16][]byte{0: www[:12], 2: www} {
			b = append([]byte(nil), b...)
			binary.BigEndian.PutUint16(b[4:], qd)
			if m := rawUDP(t, l, b, 2*time.Second); m == nil || m.Rcode != dns.RcodeFormatError {
				t.Errorf("%s: QDCOUNT %d answered %v, want FORMERR", l, qd, m)
			}
		}
		// Malformed names: a pointer to itself, a label of 64, a name that
		// runs past the end. FORMERR or silence, and the server goes on.
		for what, b := range map[string][]byte{
			"pointer loop": append(append([]byte(nil), www[:12]...), 0xc0, 12, 0, 1, 0, 1),
			"label of 64":  append(append(append([]byte(nil), www[:12]...), 64), make([]byte, 64+5)...),
			"name cut":     append(append([]byte(nil), www[:12]...), 3, 'w', 'w'),
		} {
			if m := rawUDP(t, l, b, 300*time.Millisecond); m != nil && m.Rcode != dns.RcodeFormatError {
				t.Errorf("%s: %s answered %v, want FORMERR or nothing", l, what, m)
			}
		}
		// A query over 512 bytes without EDNS0 (a TXT record in the
		// additional section) is a query like any other: answered, not
		// FORMERR (stock CoreDNS reads 512 bytes and answers FORMERR).
		// The chain forwards it whole; the test upstream reads it whole.
		long := packed(t, "www.diff.test.", dns.TypeA, func(m *dns.Msg) {
			m.Extra = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET},
				Txt: []string{strings.Repeat("x", 250), strings.Repeat("y", 250)}}}
		})
		if m := rawUDP(t, l, long, 2*time.Second); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("%s: a %d-byte query without EDNS0 answered %v, want the A record", l, len(long), m)
		}
		// The same shape under 512 bytes: it is the size that matters.
		short := packed(t, "www.diff.test.", dns.TypeA, func(m *dns.Msg) {
			m.Extra = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET},
				Txt: []string{strings.Repeat("x", 250)}}}
		})
		if m := rawUDP(t, l, short, 2*time.Second); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("%s: a %d-byte query without EDNS0 answered %v, want the A record", l, len(short), m)
		}
		if err := probe(l); err != nil {
			t.Errorf("%s after the malformed queries: %v", l, err)
		}
	}
}

// TestPipelinedTCP: 100 queries written at once on one connection are all
// answered on it.
func TestPipelinedTCP(t *testing.T) {
	a := startAuth(t)
	d := startLocaldns(t, "127.0.47.1", "127.0.47.2", a.addr, "", "")
	c, err := net.Dial("tcp", d.pods)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stream []byte
	for i := 0; i < 100; i++ {
		// Misses and hits mixed: every fifth name repeats www.
		name := fmt.Sprintf("p%d.wild.diff.test.", i)
		if i%5 == 0 {
			name = "www.diff.test."
		}
		q := packed(t, name, dns.TypeA, func(m *dns.Msg) { m.Id = uint16(1000 + i) })
		stream = binary.BigEndian.AppendUint16(stream, uint16(len(q)))
		stream = append(stream, q...)
	}
	if _, err := c.Write(stream); err != nil {
		t.Fatal(err)
	}
	seen := map[uint16]bool{}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(seen) < 100 {
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if m.Id < 1000 || m.Id >= 1100 || seen[m.Id] || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("bad or repeated answer: %v", m)
		}
		seen[m.Id] = true
	}
}

// TestIdleTCPConnections: 2000 connections that never send a byte do not
// stop others from being served, cost bounded memory, and are closed by the
// server after its read timeout.
func TestIdleTCPConnections(t *testing.T) {
	a := startAuth(t)
	d := startLocaldns(t, "127.0.48.1", "127.0.48.2", a.addr, "", "")
	before := d.rss(t)
	conns := make([]net.Conn, 0, 2000)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < 2000 {
		c, err := net.Dial("tcp", d.node)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	opened := time.Now()
	if err := probe(d.node); err != nil {
		t.Fatalf("with 2000 idle connections open: %v", err)
	}
	held := d.rss(t)
	// Every idle connection is closed by the server: a read sees EOF or a
	// reset, not our own deadline.
	var wg sync.WaitGroup
	var open atomic.Int32
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(opened.Add(20 * time.Second))
			_, err := c.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				open.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("RSS %d MiB before, %d MiB with 2000 idle connections; all closed by the server %s after opening",
		before>>20, held>>20, time.Since(opened).Round(100*time.Millisecond))
	if n := open.Load(); n > 0 {
		t.Errorf("%d of 2000 idle connections still open after 20 s", n)
	}
	if held > before+64<<20 {
		t.Errorf("2000 idle connections took %d MiB", (held-before)>>20)
	}
	if err := probe(d.node); err != nil {
		t.Errorf("after the idle connections: %v", err)
	}
}

// liar answers a query for lie-KIND-N.diff.test. first with one forged
// reply of that kind, carrying a poison address, and then with the truth.
// Other names it passes to the authoritative server.
type liar struct{ a *auth }

const poison = "203.0.113.66"

// forgeries are the kinds of forged reply, by the name's KIND label.
var forgeries = map[string]func(m *dns.Msg){
	"id": func(m *dns.Msg) { m.Id++ }, // wrong ID
	"qname": func(m *dns.Msg) {
		m.Question[0].Name = "other." + m.Question[0].Name
		m.Answer[0].Header().Name = m.Question[0].Name
	}, // another name
	"qtype": func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }, // another type
	"qr0":   func(m *dns.Msg) { m.Response = false },                 // not a reply
}

func (l liar) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	labels := dns.SplitDomainName(strings.ToLower(r.Question[0].Name))
	if len(r.Question) != 1 || len(labels) < 2 || labels[0] != "lie" || forgeries[labels[1]] == nil {
		l.a.ServeDNS(w, r)
		return
	}
	reply := func(ip string) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP(ip)}}
		return m
	}
	forged := reply(poison)
	forgeries[labels[1]](forged)
	b, _ := forged.Pack()
	w.Write(b)
	w.WriteMsg(reply("192.0.2.99"))
}

// TestLyingUpstream: a forged reply (wrong ID, another question, QR=0)
// that comes before the true one is neither passed on nor cached, and the
// true reply is what the client gets, from the upstream and then from the
// cache.
func TestLyingUpstream(t *testing.T) {
	a := startAuth(t)
	addr, _ := testdns.Serve(t, liar{a})
	d := startLocaldns(t, "127.0.49.1", "127.0.49.2", addr, "", "")
	for kind := range forgeries {
		for i, l := range []string{d.node, d.pods, d.node, d.pods} { // the second round is from the cache
			name := fmt.Sprintf("lie.%s.n%d.diff.test.", kind, i%2)
			m := testdns.Query(t, "udp", l, name, dns.TypeA)
			for _, rr := range m.Answer {
				if a, ok := rr.(*dns.A); ok && a.A.String() == poison {
					t.Fatalf("%s on %s: poisoned: %v", name, l, m)
				}
			}
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.99" {
				t.Errorf("%s on %s: %s with %d records, want the true answer 192.0.2.99", name, l, dns.RcodeToString[m.Rcode], len(m.Answer))
			}
		}
	}
}

// TestReloadsUnderLoad: 50 SIGHUPs while clients query without pause; no
// query goes unanswered.
func TestReloadsUnderLoad(t *testing.T) {
	a := startAuth(t)
	d := startLocaldns(t, "127.0.50.1", "127.0.50.2", a.addr, "", "")
	stop := make(chan struct{})
	var sent, lost atomic.Int64
	var wg sync.WaitGroup
	for i, l := range []string{d.node, d.pods, d.node, d.pods} {
		network := []string{"udp", "tcp"}[i/2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				name := "www.diff.test."
				if n%4 == 0 {
					name = fmt.Sprintf("r%d-%d.wild.diff.test.", i, n) // a miss
				}
				sent.Add(1)
				m, err := testdns.Exchange(network, l, name, dns.TypeA)
				if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
					lost.Add(1)
					t.Errorf("%s over %s to %s during reloads: %v %v", name, network, l, err, m)
				}
			}
		}()
	}
	for i := 1; i <= 50; i++ {
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(d.log.String(), "msg=reloaded") < i {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("reload %d not logged within 10s", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d queries during 50 reloads, %d lost", sent.Load(), lost.Load())
	if !d.alive() {
		t.Fatal("localdns died")
	}
}

// TestDamagedOrUnwritableSnapshot: whatever is at the snapshot path, the
// binary starts, answers, and stops cleanly (the plugin-level cases are in
// plugin/nodecache; this is the process with its daemon around it). An
// unwritable path is one whose parent is a regular file, which even root
// cannot create.
func TestDamagedOrUnwritableSnapshot(t *testing.T) {
	a := startAuth(t)
	for name, content := range map[string][]byte{
		"garbage":    []byte("this is not a snapshot"),
		"truncated":  []byte("LDNSCACH\x00\x01\x00\x00\x00\x00\x00\x05"),
		"empty":      {},
		"unwritable": nil,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := dir + "/cache.snapshot"
			if content == nil {
				if err := os.WriteFile(dir+"/file", nil, 0o600); err != nil {
					t.Fatal(err)
				}
				path = dir + "/file/cache.snapshot"
			} else if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			d := startLocaldns(t, "127.0.51.1", "127.0.51.2", a.addr, path, "")
			for _, l := range []string{d.node, d.pods} {
				if err := probe(l); err != nil {
					t.Fatalf("with a %s snapshot: %v", name, err)
				}
			}
			d.cmd.Process.Signal(syscall.SIGTERM)
			deadline := time.Now().Add(10 * time.Second)
			for d.alive() {
				if time.Now().After(deadline) {
					t.Fatalf("did not stop within 10s of SIGTERM")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if content != nil {
				if b, err := os.ReadFile(path); err != nil || !strings.HasPrefix(string(b), "LDNSCACH") {
					t.Errorf("the %s snapshot was not replaced by a good one at shutdown: %q %v", name, b, err)
				}
			}
		})
	}
}
