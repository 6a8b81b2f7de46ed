package netsetup

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/testdns"
)

// TestConntrackBypass measures conntrack entries in a node namespace while a
// pod namespace, joined to it by a veth pair, sends queries from fresh source
// ports to a DNS server on a listener address:
//
//	no rules                 every query creates an entry (the reply matches it)
//	dport notrack only       the query is untracked, but every reply creates one
//	dport + reply notrack    nothing is tracked, from the pod nor from the host
func TestConntrackBypass(t *testing.T) {
	const queries = 2000
	node, nodeName := newNS(t)
	pod, podName := newNS(t)
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_count"); err != nil {
		t.Skipf("skipping: conntrack is not available in this kernel: %v", err)
	}
	// No IPv6: neighbour discovery and MLD would add entries of their own.
	for _, n := range []string{nodeName, podName} {
		inNS(t, n, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}

	// node 192.0.2.1/24 <-veth-> pod 192.0.2.2/24; the pod reaches the
	// listener through the node, as a pod does through its CNI.
	hn, err := netlink.NewHandleAt(node)
	if err != nil {
		t.Fatal(err)
	}
	defer hn.Close()
	hp, err := netlink.NewHandleAt(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	if err := hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node0"}, PeerName: "pod0"}); err != nil {
		t.Fatalf("creating veth: %v", err)
	}
	podEnd, err := hn.LinkByName("pod0")
	if err != nil {
		t.Fatal(err)
	}
	if err := hn.LinkSetNsFd(podEnd, int(pod)); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, link, cidr string) netlink.Link {
		t.Helper()
		l, err := h.LinkByName(link)
		if err != nil {
			t.Fatal(err)
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	setup(hn, "node0", "192.0.2.1/24")
	pl := setup(hp, "pod0", "192.0.2.2/24")
	_, dst, _ := net.ParseCIDR("169.254.10.11/32")
	if err := hp.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: dst, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatalf("pod route to the listener: %v", err)
	}

	cfg := Config{Addrs: []netip.Addr{clusterListener}, StateDir: t.TempDir(), NetNS: node}
	if _, err := EnsureAddresses(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Teardown(cfg); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})

	// Conntrack hooks are registered in a namespace only once a ruleset
	// needs them (as kube-proxy's or any CNI's does on a node): a ct match.
	inNS(t, nodeName, "nft", "add table inet ctprobe; add chain inet ctprobe pre { type filter hook prerouting priority 0; }; add rule inet ctprobe pre ct state new counter")
	if got := inNS(t, nodeName, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"); strings.TrimSpace(got) == "" {
		t.Fatal("nf_conntrack_count unreadable in node namespace")
	}

	pc := listenUDPIn(t, node, "169.254.10.11:53")
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A:   net.IPv4(192, 0, 2, 53),
		})
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	var ln net.Listener
	if err := withNS(t, node, func() (err error) {
		ln, err = net.Listen("tcp", "169.254.10.11:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tcpStarted := make(chan struct{})
	tsrv := &dns.Server{Listener: ln, Handler: srv.Handler, NotifyStartedFunc: func() { close(tcpStarted) }}
	go tsrv.ActivateAndServe()
	<-tcpStarted
	t.Cleanup(func() { tsrv.Shutdown() })

	count := func() int {
		t.Helper()
		s := strings.TrimSpace(inNS(t, nodeName, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("nf_conntrack_count %q: %v", s, err)
		}
		return n
	}
	// run sends queries from the pod, each from its own source port starting
	// at base, and returns how many conntrack entries the node gained.
	run := func(from netns.NsHandle, src net.IP, base int) int {
		t.Helper()
		before := count()
		q := new(dns.Msg)
		q.SetQuestion("example.test.", dns.TypeA)
		wire, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		answered := 0
		err = withNS(t, from, func() error {
			var err error
			answered, err = testdns.QueryFromPorts(src, base, &net.UDPAddr{IP: net.IPv4(169, 254, 10, 11), Port: 53}, wire, queries)
			return err
		})
		if err != nil {
			t.Fatalf("querying from the pod: %v", err)
		}
		if answered != queries {
			t.Fatalf("%d of %d queries answered", answered, queries)
		}
		return count() - before
	}

	podIP, hostIP := net.IPv4(192, 0, 2, 2), net.IPv4(192, 0, 2, 1)
	none := run(pod, podIP, 20000)

	if err := EnsureRules(cfg); err != nil {
		t.Fatal(err)
	}
	queryOnly := run(pod, podIP, 30000)
	// Those entries are the replies, tracked as new flows from the listener.
	out, err := exec.Command("ip", "netns", "exec", nodeName, "conntrack", "-L", "-p", "udp", "--orig-src", "169.254.10.11", "--orig-port-src", "53").Output()
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	replyFlows := strings.Count(string(out), "\n")
	t.Logf("with dport notrack only: %d udp entries with original direction 169.254.10.11:53 -> pod", replyFlows)
	if replyFlows < queryOnly*95/100 {
		t.Errorf("%d of %d new entries are reply flows", replyFlows, queryOnly)
	}

	cfg.ReplyNotrack = true
	if err := EnsureRules(cfg); err != nil {
		t.Fatal(err)
	}
	both := run(pod, podIP, 40000)
	// The host's own queries: output hook there, loopback back in.
	host := run(node, hostIP, 50000)

	// TCP from the pod, each query on its own connection.
	const tcpQueries = 100
	before := count()
	err = withNS(t, pod, func() error {
		for i := range tcpQueries {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: podIP, Port: 45000 + i}, Timeout: time.Second}
			nc, err := d.Dial("tcp", "169.254.10.11:53")
			if err != nil {
				return err
			}
			c := &dns.Conn{Conn: nc}
			q := new(dns.Msg)
			q.SetQuestion("example.test.", dns.TypeA)
			c.SetDeadline(time.Now().Add(time.Second))
			if err := c.WriteMsg(q); err != nil {
				c.Close()
				return err
			}
			if _, err := c.ReadMsg(); err != nil {
				c.Close()
				return err
			}
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("TCP queries from the pod: %v", err)
	}
	tcp := count() - before

	t.Logf("conntrack entries created in the node namespace by %d queries from fresh source ports: no rules %d, dport notrack only %d, dport+reply notrack %d; from the host (dport+reply notrack) %d; %d TCP queries from the pod (dport+reply notrack) %d",
		queries, none, queryOnly, both, host, tcpQueries, tcp)
	s, err := Status(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Since the last EnsureRules: a pod query and its reply hit 2 rules
	// (prerouting, output); a host query 3 (output, prerouting again after
	// lo, reply in output); TCP at least a segment each way.
	if want := uint64(queries*2 + queries*3 + tcpQueries*2); s.NotrackPackets < want {
		t.Errorf("Status counts %d notrack packets, want at least %d", s.NotrackPackets, want)
	}
	t.Logf("nft list table inet localdns after the last run:\n%s", inNS(t, nodeName, "nft", "list", "table", "inet", "localdns"))

	if none < queries*95/100 {
		t.Errorf("without rules %d entries for %d queries: is conntrack running in the namespace?", none, queries)
	}
	if queryOnly < queries*95/100 {
		t.Errorf("with dport notrack only %d entries, want about one per reply (%d)", queryOnly, queries)
	}
	if both != 0 {
		t.Errorf("with dport and reply notrack %d entries, want 0", both)
	}
	if tcp != 0 {
		t.Errorf("TCP queries with dport and reply notrack: %d entries, want 0", tcp)
	}
	if host != 0 {
		t.Errorf("host queries with dport and reply notrack: %d entries, want 0", host)
	}
}
