package fastpath

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
)

// chainAnswer is the plugin chain of the test server: an A record for the
// question, and a TXT record holding how many bytes of TXT strings the
// query's additional section carried, so the test sees the query reached
// the chain whole. A query without dnsserver's context or without a UDP
// peer gets SERVFAIL. Before answering it waits for hold, if set.
func chainAnswer(hold <-chan struct{}, entered chan<- struct{}) plugin.Handler {
	return plugin.HandlerFunc(func(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		if entered != nil {
			entered <- struct{}{}
		}
		if hold != nil {
			<-hold
		}
		m := new(dns.Msg).SetReply(r)
		_, isServer := ctx.Value(dnsserver.Key{}).(*dnsserver.Server)
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		if !isServer || !isUDP {
			m.Rcode = dns.RcodeServerFailure
			w.WriteMsg(m)
			return dns.RcodeServerFailure, nil
		}
		extra := 0
		for _, rr := range r.Extra {
			if txt, ok := rr.(*dns.TXT); ok {
				for _, s := range txt.Txt {
					extra += len(s)
				}
			}
		}
		name := r.Question[0].Name
		m.Answer = []dns.RR{
			&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(192, 0, 2, 1)},
			&dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 30}, Txt: []string{strconv.Itoa(extra)}},
		}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	})
}

// serveChain serves h with CoreDNS's server (dnsserver.Server.ServePacket)
// on a loopback socket wrapped by Wrap with table, as the daemon does.
func serveChain(t *testing.T, table *Table, h plugin.Handler) (*Conn, string) {
	t.Helper()
	cfg := &dnsserver.Config{Zone: ".", Transport: "dns", Port: "0", ListenHosts: []string{"127.0.0.1"}}
	cfg.AddPlugin(func(plugin.Handler) plugin.Handler { return h })
	srv, err := dnsserver.NewServer("dns://127.0.0.1:0", []*dnsserver.Config{cfg})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, ok := Wrap(pc, table, srv).(*Conn)
	if !ok {
		t.Fatal("Wrap did not put the fast path in front")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServePacket(c)
	}()
	t.Cleanup(func() {
		srv.Stop()
		c.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServePacket did not return after Stop and Close")
		}
	})
	return c, c.LocalAddr().String()
}

// longQuery is an A query for name without EDNS0, padded to size bytes
// with TXT strings in the additional section.
func longQuery(t *testing.T, name string, size int) (q []byte, txtBytes int) {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	base := m.Len() + 11 // the TXT record's owner (root), type, class, TTL, RDLENGTH
	var txt []string
	for rest := size - base; rest > 0; {
		n := min(rest-1, 255)
		txt = append(txt, strings.Repeat("x", n))
		txtBytes += n
		rest -= n + 1
	}
	m.Extra = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: txt}}
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != size {
		t.Fatalf("built a %d-byte query, want %d", len(q), size)
	}
	return q, txtBytes
}

// exchangeRaw sends q over UDP to server and returns the answer, nil when
// none came within timeout.
func exchangeRaw(t *testing.T, server string, q []byte, timeout time.Duration) *dns.Msg {
	t.Helper()
	c, err := net.Dial("udp4", server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return m
}

// TestLongQueryWithoutEDNSAnswered: queries over 512 bytes without EDNS0
// reach CoreDNS's plugin chain whole and are answered, on a listener with a
// cache in front and on one without; a malformed long query gets FORMERR,
// as miekg's server answers a malformed short one. Without the long-query
// path, CoreDNS's server gets them cut at 512 bytes and answers FORMERR.
func TestLongQueryWithoutEDNSAnswered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		table *Table
	}{
		{"cache", &Table{zones: map[string]zone{"fast.": {wa: echoCache{}}, ".": {}}, counter: answers.WithLabelValues("test")}},
		{"no-cache", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, server := serveChain(t, tc.table, chainAnswer(nil, nil))
			for _, size := range []int{100, 512, 513, 544, 1400, 4000} {
				q, txtBytes := longQuery(t, "www.slow.", size)
				m := exchangeRaw(t, server, q, 2*time.Second)
				if m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 2 {
					t.Fatalf("%d-byte query answered %v, want an A and a TXT record", size, m)
				}
				if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IPv4(192, 0, 2, 1)) {
					t.Errorf("%d-byte query: answer %v, want A 192.0.2.1", size, m.Answer[0])
				}
				if txt, ok := m.Answer[1].(*dns.TXT); !ok || len(txt.Txt) != 1 || txt.Txt[0] != strconv.Itoa(txtBytes) {
					t.Errorf("%d-byte query: the chain saw %v bytes of TXT, want %d (the query whole)", size, m.Answer[1], txtBytes)
				}
			}
			// A long query with a label of 64 bytes in its question.
			q, _ := longQuery(t, "www.slow.", 600)
			q[12] = 64
			if m := exchangeRaw(t, server, q, 2*time.Second); m == nil || m.Rcode != dns.RcodeFormatError || m.Id != uint16(q[0])<<8|uint16(q[1]) {
				t.Errorf("malformed 600-byte query answered %v, want FORMERR", m)
			}
			// A long message with QR=1 is not a query: no answer.
			q, _ = longQuery(t, "www.slow.", 600)
			q[2] |= 0x80
			if m := exchangeRaw(t, server, q, 300*time.Millisecond); m != nil {
				t.Errorf("a 600-byte message with QR=1 was answered: %v", m)
			}
		})
	}
}

// TestCloseAnswersLongQueriesInFlight: Close waits for a long query the
// chain is still answering, so its answer goes out before the socket
// closes, as dnsserver's Stop lets its own queries finish.
func TestCloseAnswersLongQueriesInFlight(t *testing.T) {
	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	c, server := serveChain(t, nil, chainAnswer(hold, entered))
	q, _ := longQuery(t, "www.slow.", 1400)
	client, err := net.Dial("udp4", server)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write(q); err != nil {
		t.Fatal(err)
	}
	got := make(chan *dns.Msg, 1)
	go func() {
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 65535)
		m := new(dns.Msg)
		if n, err := client.Read(buf); err != nil || m.Unpack(buf[:n]) != nil {
			m = nil
		}
		got <- m
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the long query did not reach the chain")
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a long query was in flight", err)
	case <-time.After(100 * time.Millisecond): // Close is waiting, as it should
	}
	close(hold)
	if m := <-got; m == nil || m.Rcode != dns.RcodeSuccess {
		t.Errorf("the long query in flight at Close was answered %v, want the A record", m)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the long query was answered")
	}
}
