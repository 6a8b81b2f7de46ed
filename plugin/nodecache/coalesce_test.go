package nodecache

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// gatedUpstream is a next plugin that reports each query it gets on arrived
// and answers it, with an A record derived from the name, only once release
// is closed.
type gatedUpstream struct {
	arrived chan string
	release chan struct{}
}

func (g *gatedUpstream) Name() string { return "gated" }
func (g *gatedUpstream) ServeDNS(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	name := r.Question[0].Name
	g.arrived <- name
	<-g.release
	m := new(dns.Msg).SetReply(r)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: addrFor(name)}}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

func addrFor(name string) net.IP { return net.IPv4(192, 0, 2, byte(len(name))) }

// recorder keeps the last message written to it.
type recorder struct {
	discard
	msg *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }
func (r *recorder) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	r.msg = m
	return len(b), nil
}

// TestCollidingKeysDoNotShareAnAnswer makes every key hash to the same value
// and sends two concurrent misses for different names: each must reach the
// upstream and get its own answer, although the store's bucket and (before
// coalescing compared full keys) the in-flight table see the same hash.
func TestCollidingKeysDoNotShareAnAnswer(t *testing.T) {
	s := NewStore(8 << 20)
	s.keys.fixed = true
	up := &gatedUpstream{arrived: make(chan string, 2), release: make(chan struct{})}
	h := &Nodecache{store: s, ns: 1, pol: defaultConfig().policy, Next: up}
	names := []string{"a.example.org.", "bbbb.example.org."}
	udp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	writers := make([]*recorder, len(names))
	done := make(chan struct{}, len(names))
	ask := func(i int) {
		writers[i] = &recorder{discard: discard{remote: udp}}
		go func() {
			defer func() { done <- struct{}{} }()
			h.ServeDNS(context.Background(), writers[i], new(dns.Msg).SetQuestion(names[i], dns.TypeA))
		}()
	}
	ask(0)
	if got := <-up.arrived; got != names[0] {
		t.Fatalf("upstream got %q first", got)
	}
	ask(1)
	// The second miss must reach the upstream while the first is in flight;
	// if it were coalesced with the first, it would wait for release instead.
	select {
	case got := <-up.arrived:
		if got != names[1] {
			t.Errorf("upstream got %q second", got)
		}
	case <-time.After(3 * time.Second):
		t.Error("the second miss never reached the upstream: coalesced with a different key")
	}
	close(up.release)
	for range names {
		<-done
	}
	for i, w := range writers {
		if w.msg == nil || len(w.msg.Answer) != 1 {
			t.Fatalf("%s: answer %v", names[i], w.msg)
		}
		a := w.msg.Answer[0].(*dns.A)
		if a.Hdr.Name != names[i] || !a.A.Equal(addrFor(names[i])) {
			t.Errorf("%s: got the answer %v", names[i], a)
		}
	}
	// Only one of the two can sit in the (single) bucket; a lookup of either
	// name gives its own entry or none, never the other's.
	for _, name := range names {
		if e := lookup(s, 1, name); e != nil {
			if got, _, _ := dns.UnpackDomainName(e.name, 0); got != name {
				t.Errorf("lookup of %s found the entry of %s", name, got)
			}
		}
	}
}

// TestKeyHashIsSeededPerStore: two stores (two processes) hash the same key
// differently, so colliding names cannot be computed ahead of time.
func TestKeyHashIsSeededPerStore(t *testing.T) {
	name := []byte("\x07example\x03org\x00")
	a, b := NewStore(1<<20), NewStore(1<<20)
	ka := a.keys.keyOf(1, 0, dns.TypeA, dns.ClassINET, name)
	if ka != a.keys.keyOf(1, 0, dns.TypeA, dns.ClassINET, []byte("\x07EXAMPLE\x03org\x00")) {
		t.Fatal("the hash is not case-insensitive")
	}
	if ka == b.keys.keyOf(1, 0, dns.TypeA, dns.ClassINET, name) {
		t.Fatal("two stores hash a key alike: the seed is not random")
	}
}
