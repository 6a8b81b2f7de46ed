package netsetup

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/testdns"
)

// fallbackLab is a node namespace between a pod namespace and an "upstream"
// namespace:
//
//	pod 10.1.0.2 ── node 10.1.0.1 | node 10.2.0.1 ── upstream 10.2.0.2, 10.2.0.3, 10.2.0.4
//
// The node has a kube-proxy-like DNAT of the cluster DNS service address
// 10.96.0.10:53 to 10.2.0.2:53 (and, with two pods, 10.2.0.4:53) in a table
// of its own. The upstream namespace has no route to 169.254.0.0/16: a query
// that leaves the node from a listener address gets no reply unless it is
// masqueraded. Each upstream server answers every A query with its own
// address, so a client sees which server answered.
type fallbackLab struct {
	node, pod, up             netns.NsHandle
	nodeName, podName, upName string
	cfg                       Config
}

var (
	clusterService = netip.MustParseAddrPort("10.96.0.10:53")
	vnetServer     = netip.MustParseAddrPort("10.2.0.3:5353")
)

func newFallbackLab(t *testing.T) *fallbackLab {
	t.Helper()
	l := &fallbackLab{}
	l.node, l.nodeName = newNS(t)
	l.pod, l.podName = newNS(t)
	l.up, l.upName = newNS(t)
	run := func(args ...string) { inNS(t, l.nodeName, args...) }
	run("ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1", "netns", l.podName)
	run("ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns", l.upName)
	run("ip", "addr", "add", "10.1.0.1/24", "dev", "p0")
	run("ip", "addr", "add", "10.2.0.1/24", "dev", "u0")
	run("ip", "link", "set", "p0", "up")
	run("ip", "link", "set", "u0", "up")
	run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	inNS(t, l.podName, "ip", "addr", "add", "10.1.0.2/24", "dev", "p1")
	inNS(t, l.podName, "ip", "link", "set", "p1", "up")
	inNS(t, l.podName, "ip", "route", "add", "default", "via", "10.1.0.1")
	for _, a := range []string{"10.2.0.2/24", "10.2.0.3/24", "10.2.0.4/24"} {
		inNS(t, l.upName, "ip", "addr", "add", a, "dev", "u1")
	}
	inNS(t, l.upName, "ip", "link", "set", "u1", "up")
	inNS(t, l.upName, "ip", "route", "add", "10.1.0.0/24", "via", "10.2.0.1")
	// The node's default route points into the upstream namespace, as a
	// node's points at its VNet.
	run("ip", "route", "add", "default", "via", "10.2.0.2")
	l.kubeProxy(t, "10.2.0.2")

	for _, a := range []string{"10.2.0.2:53", "10.2.0.4:53", vnetServer.String()} {
		l.serveUpstream(t, a)
	}
	l.cfg = Config{
		Addrs:    []netip.Addr{nodeListener, clusterListener},
		NetNS:    l.node,
		StateDir: t.TempDir(),
		Fallback: []FallbackRoute{
			{Listener: nodeListener, Upstreams: []netip.AddrPort{vnetServer}},
			{Listener: clusterListener, Upstreams: []netip.AddrPort{clusterService}},
		},
		ReplyNotrack: true,
	}
	return l
}

// kubeProxy (re)writes the node's stand-in for kube-proxy: a DNAT of the
// service address to the given endpoints, at dstnat priority in prerouting
// and output, in a table of its own.
func (l *fallbackLab) kubeProxy(t *testing.T, endpoints ...string) {
	t.Helper()
	target := "dnat to " + endpoints[0]
	if len(endpoints) > 1 {
		var m []string
		for i, e := range endpoints {
			m = append(m, fmt.Sprintf("%d : %s", i, e))
		}
		target = fmt.Sprintf("dnat to numgen random mod %d map { %s }", len(endpoints), strings.Join(m, ", "))
	}
	rules := fmt.Sprintf(`table ip kube-proxy-test
delete table ip kube-proxy-test
table ip kube-proxy-test {
	chain pre {
		type nat hook prerouting priority dstnat;
		ip daddr 10.96.0.10 meta l4proto { udp, tcp } th dport 53 %[1]s
	}
	chain out {
		type nat hook output priority -100;
		ip daddr 10.96.0.10 meta l4proto { udp, tcp } th dport 53 %[1]s
	}
}
`, target)
	out, err := execIn(l.nodeName, rules, "nft", "-f", "-")
	if err != nil {
		t.Fatalf("kube-proxy stand-in: %v\n%s", err, out)
	}
}

// serveUpstream serves DNS on addr (UDP and TCP) in the upstream
// namespace, answering A queries with the server's own address.
func (l *fallbackLab) serveUpstream(t *testing.T, addr string) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: ap.Addr().AsSlice()})
		}
		w.WriteMsg(m)
	})
	serveIn(t, l.up, addr, h)
}

// serveIn serves h on addr (UDP and TCP) inside ns until the test ends.
func serveIn(t *testing.T, ns netns.NsHandle, addr string, h dns.Handler) {
	t.Helper()
	pc := listenUDPIn(t, ns, addr)
	var ln net.Listener
	if err := withNS(t, ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	testdns.ServeConns(t, pc, ln, h)
}

// ask sends one A query from ns to server:53 and returns the answering
// server's address ("" on error).
func ask(t *testing.T, ns netns.NsHandle, network string, server netip.Addr, timeout time.Duration) (string, error) {
	t.Helper()
	var conn net.Conn
	err := withNS(t, ns, func() (err error) {
		conn, err = net.DialTimeout(network, netip.AddrPortFrom(server, 53).String(), timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	c := &dns.Conn{Conn: conn}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("fallback.test.", dns.TypeA)
	c.SetDeadline(time.Now().Add(timeout))
	if err := c.WriteMsg(m); err != nil {
		return "", err
	}
	r, err := c.ReadMsg()
	if err != nil {
		return "", err
	}
	if r.Id != m.Id || len(r.Answer) != 1 {
		return "", fmt.Errorf("bad answer: %v", r)
	}
	return r.Answer[0].(*dns.A).A.String(), nil
}

// TestFallback: with the fallback in place and nothing serving the
// listeners, pods and the host resolve through them over UDP and TCP: the
// cluster listener via the service address (translated by the kube-proxy
// stand-in), the node listener straight to the VNet server on another port;
// replies come from the listener address.
func TestFallback(t *testing.T) {
	l := newFallbackLab(t)
	if _, err := EnsureAddresses(l.cfg); err != nil {
		t.Fatal(err)
	}
	if err := EnsureRules(l.cfg); err != nil {
		t.Fatal(err)
	}
	if err := InstallFallback(l.cfg); err != nil {
		t.Fatal(err)
	}
	tables := inNS(t, l.nodeName, "nft", "list", "tables")
	if !strings.Contains(tables, "inet localdns-fallback") || strings.Contains(tables, "inet localdns\n") {
		t.Fatalf("after InstallFallback: want the fallback table and no bypass table:\n%s", tables)
	}
	check := func(ns netns.NsHandle, who string) {
		t.Helper()
		for _, network := range []string{"udp", "tcp"} {
			for listener, want := range map[netip.Addr]string{clusterListener: "10.2.0.2", nodeListener: "10.2.0.3"} {
				got, err := ask(t, ns, network, listener, 2*time.Second)
				if err != nil || got != want {
					t.Errorf("%s %s %s: answered by %q, %v; want %s", who, network, listener, got, err, want)
				}
			}
		}
	}
	// The host, with the listener addresses still on the node (masquerade).
	check(l.node, "host")
	check(l.pod, "pod")
	// Teardown keeps the fallback and removes the addresses.
	if err := Teardown(l.cfg); err != nil {
		t.Fatal(err)
	}
	if addrs := inNS(t, l.nodeName, "ip", "-4", "addr", "show", "dev", "lo"); strings.Contains(addrs, "169.254.10.1") {
		t.Errorf("addresses left after teardown:\n%s", addrs)
	}
	check(l.node, "host after teardown")
	check(l.pod, "pod after teardown")

	fs, err := Fallback(l.cfg)
	if err != nil || !fs.Present || fs.Since.IsZero() || time.Since(fs.Since) > time.Minute {
		t.Fatalf("Fallback() = %+v, %v", fs, err)
	}
	if fs.Packets[clusterListener] == 0 || fs.Packets[nodeListener] == 0 {
		t.Errorf("fallback counters: %v", fs.Packets)
	}
	if got := fs.Upstreams[clusterListener]; len(got) != 1 || got[0] != clusterService {
		t.Errorf("fallback upstreams of the cluster listener: %v", got)
	}
	// Installing again keeps the original install time.
	since := fs.Since
	time.Sleep(1100 * time.Millisecond)
	if err := InstallFallback(l.cfg); err != nil {
		t.Fatal(err)
	}
	if fs, _ := Fallback(l.cfg); !fs.Since.Equal(since) {
		t.Errorf("re-install changed the install time: %v -> %v", since, fs.Since)
	}
	// Purge leaves nothing.
	if err := Purge(l.cfg); err != nil {
		t.Fatal(err)
	}
	if tables := inNS(t, l.nodeName, "nft", "list", "tables"); strings.Contains(tables, "localdns") {
		t.Errorf("tables left after purge:\n%s", tables)
	}
}

// TestFallbackSpread: two service addresses' worth of upstreams (the same
// service address twice would be pointless; two VNet servers) share the
// flows by a hash of the client's address and port.
func TestFallbackSpread(t *testing.T) {
	l := newFallbackLab(t)
	l.cfg.Fallback = []FallbackRoute{{Listener: clusterListener, Upstreams: []netip.AddrPort{
		netip.MustParseAddrPort("10.2.0.2:53"), netip.MustParseAddrPort("10.2.0.4:53")}}}
	if err := InstallFallback(l.cfg); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for i := 0; i < 200; i++ {
		a, err := ask(t, l.pod, "udp", clusterListener, 2*time.Second)
		if err != nil {
			t.Fatalf("query %d: %v\n%s", i, err, inNS(t, l.nodeName, "conntrack", "-L"))
		}
		got[a]++
	}
	if got["10.2.0.2"] < 60 || got["10.2.0.4"] < 60 {
		t.Errorf("200 queries spread as %v, want both upstreams well used", got)
	}
}

// TestFallbackProbeMark: a query marked ProbeMark (localdns's self-probe)
// reaches the local listener while the fallback is in place.
func TestFallbackProbeMark(t *testing.T) {
	l := newFallbackLab(t)
	if _, err := EnsureAddresses(l.cfg); err != nil {
		t.Fatal(err)
	}
	l.serveLocal(t, "local")
	if err := InstallFallback(l.cfg); err != nil {
		t.Fatal(err)
	}
	if got, err := ask(t, l.node, "udp", clusterListener, 2*time.Second); err != nil || got != "10.2.0.2" {
		t.Fatalf("unmarked host query: %q, %v; want the fallback's upstream", got, err)
	}
	var conn net.Conn
	err := withNS(t, l.node, func() (err error) {
		d := net.Dialer{Control: MarkControl(ProbeMark)}
		conn, err = d.Dial("udp", netip.AddrPortFrom(clusterListener, 53).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &dns.Conn{Conn: conn}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("probe.test.", dns.TypeTXT)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.WriteMsg(m)
	r, err := c.ReadMsg()
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.TXT).Txt[0] != "local" {
		t.Fatalf("marked probe: %v, %v; want the local server's answer", r, err)
	}
}

// serveLocal serves DNS on both listener addresses :53 in the node
// namespace (UDP and TCP), answering every query with TXT tag and A
// 169.254.10.x.
func (l *fallbackLab) serveLocal(t *testing.T, tag string) {
	t.Helper()
	for _, a := range []netip.Addr{nodeListener, clusterListener} {
		addr := netip.AddrPortFrom(a, 53).String()
		h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			q := r.Question[0]
			if q.Qtype == dns.TypeTXT {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{tag}})
			} else {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: a.AsSlice()})
			}
			w.WriteMsg(m)
		})
		serveIn(t, l.node, addr, h)
	}
}

// TestFallbackSwapNoGap: a pod asks the cluster listener without pause
// while the node swaps between serving (a local server behind the
// conntrack bypass) and the fallback, twenty times each way. Every query is
// answered, by one or the other.
func TestFallbackSwapNoGap(t *testing.T) {
	l := newFallbackLab(t)
	if _, err := EnsureAddresses(l.cfg); err != nil {
		t.Fatal(err)
	}
	l.serveLocal(t, "local")
	if err := EnsureRules(l.cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var asked, lost atomic.Int64
	by := sync.Map{}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				asked.Add(1)
				a, err := ask(t, l.pod, "udp", clusterListener, time.Second)
				if err != nil {
					lost.Add(1)
					continue
				}
				v, _ := by.LoadOrStore(a, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		}()
	}
	for i := 0; i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		if err := InstallFallback(l.cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if err := EnsureRules(l.cfg); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	counts := map[string]int64{}
	by.Range(func(k, v any) bool { counts[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d queries during 40 swaps: answered by %v, %d lost", asked.Load(), counts, lost.Load())
	if lost.Load() != 0 {
		t.Errorf("%d of %d queries lost during the swaps", lost.Load(), asked.Load())
	}
	if counts["169.254.10.11"] == 0 || counts["10.2.0.2"] == 0 {
		t.Errorf("want answers from both the local server and the fallback: %v", counts)
	}
	if tables := inNS(t, l.nodeName, "nft", "list", "tables"); strings.Contains(tables, "localdns-fallback") {
		t.Errorf("fallback still there after EnsureRules:\n%s", tables)
	}
	// Reconcile removes a fallback that appears while localdns serves.
	if err := InstallFallback(l.cfg); err != nil {
		t.Fatal(err)
	}
	rep, err := Reconcile(context.Background(), l.cfg)
	if err != nil || rep.Rules != 1 {
		t.Fatalf("Reconcile with a fallback present: %+v, %v", rep, err)
	}
	if fs, _ := Fallback(l.cfg); fs.Present {
		t.Error("Reconcile left the fallback in place")
	}
}

func TestFallbackRoutesValidation(t *testing.T) {
	base := Config{Addrs: []netip.Addr{nodeListener, clusterListener}}
	for name, routes := range map[string][]FallbackRoute{
		"none":           nil,
		"not a listener": {{Listener: netip.MustParseAddr("169.254.10.12"), Upstreams: []netip.AddrPort{clusterService}}},
		"no upstream":    {{Listener: clusterListener}},
		"loop":           {{Listener: clusterListener, Upstreams: []netip.AddrPort{netip.AddrPortFrom(nodeListener, 53)}}},
		"family":         {{Listener: clusterListener, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("[fd00::10]:53")}}},
		"port 0":         {{Listener: clusterListener, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.10:0")}}},
	} {
		cfg := base
		cfg.Fallback = routes
		cfg, _ = cfg.withDefaults()
		if err := checkFallbackRoutes(cfg); err == nil {
			t.Errorf("%s: accepted %v", name, routes)
		}
	}
}
