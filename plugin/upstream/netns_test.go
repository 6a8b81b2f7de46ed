package upstream_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/testdns"
)

// The netns test builds a small node:
//
//	ns node: localdns (this plugin), 127.0.0.1:53, and a kube-proxy-style
//	         nftables DNAT 10.96.0.10:53 -> numgen random mod 2 ->
//	         192.0.2.11 | 192.0.2.12, with conntrack.
//	ns be:   two CoreDNS "cluster DNS pods" on 192.0.2.11 and 192.0.2.12,
//	         answering *.cluster.local with 10.1.0.11 and 10.1.0.12, and a
//	         "VNet DNS" CoreDNS on 192.0.2.53 (NXDOMAIN for the cluster
//	         zones, an address for everything else).
//
// The part that must run inside the node namespace runs in a child process
// (this test binary under "ip netns exec"): the plugin opens a socket per
// query on whatever thread the query runs on, so every thread of the
// process must be in the node namespace. The backends only need their
// listening sockets in their namespace; they are started in the child on a
// thread switched there for the duration of caddy.Start.

const (
	envChild     = "LOCALDNS_UPSTREAM_NETNS_BACKEND"
	serviceIP    = "10.96.0.10"
	backend1     = "192.0.2.11"
	backend2     = "192.0.2.12"
	vnetIP       = "192.0.2.53"
	answer1      = "10.1.0.11"
	answer2      = "10.1.0.12"
	vnetAnswer   = "203.0.113.53"
	spreadNames  = 3000
	poolNames    = 20000
	poolRate     = 2000 // q/s: a fixed run length, so a fixed number of socket lifetimes
	maxShare     = 0.70
	fastFailTime = 100 * time.Millisecond
)

func TestSpreadAndFailoverNetns(t *testing.T) {
	if be := os.Getenv(envChild); be != "" {
		runNodeSide(t, be)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth links and nftables rules")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	node := fmt.Sprintf("ldns-up-node-%d", os.Getpid())
	be := fmt.Sprintf("ldns-up-be-%d", os.Getpid())
	for _, ns := range []string{node, be} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "-n", node, "link", "add", "vn", "type", "veth", "peer", "name", "vb", "netns", be)
	run(t, "ip", "-n", node, "link", "set", "lo", "up")
	run(t, "ip", "-n", node, "link", "set", "vn", "up")
	run(t, "ip", "-n", node, "addr", "add", "192.0.2.1/24", "dev", "vn")
	// The service IP needs a route for the first routing decision; after
	// the DNAT the packet is routed to the chosen backend.
	run(t, "ip", "-n", node, "route", "add", "10.96.0.0/12", "dev", "vn")
	run(t, "ip", "-n", be, "link", "set", "lo", "up")
	run(t, "ip", "-n", be, "link", "set", "vb", "up")
	for _, a := range []string{backend1, backend2, vnetIP} {
		run(t, "ip", "-n", be, "addr", "add", a+"/24", "dev", "vb")
	}
	cmd := exec.Command("ip", "netns", "exec", node, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(kubeProxyRules(serviceIP, backend1, backend2))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	child := exec.CommandContext(ctx, "ip", "netns", "exec", node, self, "-test.run", "^TestSpreadAndFailoverNetns$", "-test.v", "-test.count=1", "-test.timeout=60s")
	child.Env = append(os.Environ(), envChild+"="+be)
	var out bytes.Buffer
	child.Stdout, child.Stderr = &out, &out
	err = child.Run()
	for _, l := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		t.Log("node| " + l)
	}
	if err != nil {
		t.Fatalf("node side failed: %v", err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// runNodeSide runs in the child process, inside the node namespace.
func runNodeSide(t *testing.T, beNS string) {
	startIn := func(corefile string) *caddy.Instance {
		t.Helper()
		inst, err := startInNetns(beNS, corefile)
		if err != nil {
			t.Fatalf("start backend in %s: %v", beNS, err)
		}
		return inst
	}
	pod := func(ip, answer string) string {
		return fmt.Sprintf(".:53 {\n\tbind %s\n\ttemplate IN A cluster.local {\n\t\tanswer \"{{ .Name }} 5 IN A %s\"\n\t}\n}\n", ip, answer)
	}
	pod1 := startIn(pod(backend1, answer1))
	pod2 := startIn(pod(backend2, answer2))
	vnet := startIn(fmt.Sprintf(`.:53 {
	bind %s
	template ANY ANY cluster.local in-addr.arpa ip6.arpa {
		rcode NXDOMAIN
	}
	template IN A . {
		answer "{{ .Name }} 5 IN A %s"
	}
}
`, vnetIP, vnetAnswer))
	t.Cleanup(func() { testdns.StopCoreDNS(t, vnet) })

	block := func(spread string, extra ...string) string {
		return upstreamBlock(append([]string{
			"to " + serviceIP + ":53",
			"failover " + vnetIP + ":53",
			"never_failover cluster.local in-addr.arpa ip6.arpa",
			"group_names cluster vnet",
			"protocol prefer_udp",
			"policy sequential",
			"max_concurrent 1000",
			"health_check 0.5s",
			"spread " + spread,
		}, extra...)...)
	}
	// Spread: distinct cluster names, counted by the backend that
	// answered, and the conntrack entries left. One instance at a time:
	// they would publish the same healthy gauge.
	var on listener
	for _, v := range []struct {
		name, spread, pool string
		names, workers     int
		maxShare           float64 // 0: no limit
		maxFlows           int     // 0: no limit
	}{
		// forward's socket reuse: one flow, one pod.
		{"off/pool1", "off", "1", spreadNames, 1, 0, 0},
		// A socket per query: exact spread, a conntrack entry per query.
		{"query", "query", "16", spreadNames, 1, maxShare, 0},
		// The pool: 20k misses at 2k/s leave at most 512 entries (16
		// sockets renewed every 500ms: about 340 flows in 10 s), and those
		// flows spread them over the pods (one pod's share of 340 random
		// flows is above 60% with a chance of 2e-4).
		{"pool16/500ms", "500ms", "16", poolNames, 16, 0.60, 512},
	} {
		exec.Command("conntrack", "-F").Run()
		inst, err := startCorefile(".:0 {\n\tbind 127.0.0.1\n" + block(v.spread, "pool "+v.pool) + "\n}\n")
		if err != nil {
			t.Fatal(err)
		}
		l := listener{udp: inst.Servers()[0].LocalAddr().String()}
		start := time.Now()
		rate := 0 // unpaced
		if v.workers > 1 {
			rate = poolRate
		}
		n := askMany(t, l, v.workers, v.names, rate, func(i int) string {
			return fmt.Sprintf("svc%d.ns%d.%s.svc.cluster.local", i, i%7, strings.ReplaceAll(v.name, "/", "-"))
		})
		took := time.Since(start)
		if n[answer1]+n[answer2] != v.names {
			t.Fatalf("%s: answers %v, want %d from the two backends", v.name, n, v.names)
		}
		share := float64(max(n[answer1], n[answer2])) / float64(v.names)
		flows := conntrackFlows(serviceIP)
		t.Logf("%-12s: %d names -> backend1 %5d, backend2 %5d, larger share %5.1f%%, %5.0f q/s, %d conntrack flows to the service IP",
			v.name, v.names, n[answer1], n[answer2], 100*share, float64(v.names)/took.Seconds(), flows)
		if v.maxShare > 0 && share > v.maxShare {
			t.Errorf("%s: one backend got %.1f%% of the queries, want <= %.0f%%", v.name, 100*share, 100*v.maxShare)
		}
		if v.maxFlows > 0 && (flows < 0 || flows > v.maxFlows) {
			t.Errorf("%s: %d conntrack flows after %d misses, want <= %d", v.name, flows, v.names, v.maxFlows)
		}
		if v.name != "pool16/500ms" {
			testdns.StopCoreDNS(t, inst)
			continue
		}
		on = l
		t.Cleanup(func() { testdns.StopCoreDNS(t, inst) })
	}

	// A pod dies: kube-proxy takes it out of the DNAT but leaves the
	// conntrack entries of its flows. Those flows draw ICMP port
	// unreachable (or time out) and are retired; within seconds every
	// answer comes from the other pod, and no query fails.
	died := time.Now()
	testdns.StopCoreDNS(t, pod1)
	nftRules(t, serviceIP, backend2)
	failed, streak := 0, 0
	for i := 0; streak < 500; i++ {
		if time.Since(died) > 5*time.Second {
			t.Fatalf("5s after pod 1 died: %d queries in a row answered by pod 2, want 500 (%d failed)", streak, failed)
		}
		r, _ := ask(t, on, "udp", fmt.Sprintf("dead%d.default.svc.cluster.local", i), dns.TypeA)
		switch answerOf(r) {
		case answer2:
			streak++
		case answer1:
			t.Fatalf("answer from the stopped pod 1")
		default:
			failed++
			streak = 0
		}
	}
	t.Logf("pod 1 died: every answer from pod 2 after %s, %d queries failed on the way", time.Since(died).Round(time.Millisecond), failed)
	if failed > 0 {
		t.Errorf("%d queries failed while pod 1's flows moved, want 0 (they are retried on another socket)", failed)
	}
	pod1 = startIn(pod(backend1, answer1))
	nftRules(t, serviceIP, backend1, backend2)

	// Failover: stop both cluster DNS pods.
	stopped := time.Now()
	testdns.StopCoreDNS(t, pod1)
	testdns.StopCoreDNS(t, pod2)
	svc := serviceIP + ":53"
	waitFor(t, 15*time.Second, "service IP marked down", func() bool { return markedDown(t, "cluster", svc) })
	t.Logf("service IP marked down %s after the pods stopped", time.Since(stopped).Round(10*time.Millisecond))

	var worstExt, worstCluster time.Duration
	for i := range 200 {
		r, took := ask(t, on, "udp", fmt.Sprintf("host%d.example.com", i), dns.TypeA)
		if answerOf(r) != vnetAnswer {
			t.Fatalf("external name with the cluster DNS down: got %s, want the VNet answer", answerOf(r))
		}
		worstExt = max(worstExt, took)
		name, qtype := fmt.Sprintf("svc%d.default.svc.cluster.local", i), dns.TypeA
		if i%2 == 1 {
			name, qtype = fmt.Sprintf("%d.0.96.10.in-addr.arpa", i), dns.TypePTR
		}
		r, took = ask(t, on, "udp", name, qtype)
		if r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s with the cluster DNS down: rcode %s, want SERVFAIL (never NXDOMAIN)", name, dns.RcodeToString[r.Rcode])
		}
		worstCluster = max(worstCluster, took)
	}
	t.Logf("cluster DNS down: 200 external names via VNet, slowest %s; 200 cluster/reverse names SERVFAIL, slowest %s", worstExt, worstCluster)
	if worstCluster > fastFailTime {
		t.Errorf("slowest SERVFAIL took %s, want < %s", worstCluster, fastFailTime)
	}

	// The pods come back: the service IP is used again, for both kinds of name.
	restarted := time.Now()
	for _, p := range []string{pod(backend1, answer1), pod(backend2, answer2)} {
		inst := startIn(p)
		t.Cleanup(func() { testdns.StopCoreDNS(t, inst) })
	}
	waitFor(t, 5*time.Second, "service IP healthy again", func() bool { return healthyGauge(t, "cluster", svc) == 1 })
	t.Logf("service IP healthy again %s after the pods restarted", time.Since(restarted).Round(10*time.Millisecond))
	if r, _ := ask(t, on, "udp", "back.default.svc.cluster.local", dns.TypeA); answerOf(r) != answer1 && answerOf(r) != answer2 {
		t.Errorf("cluster name after recovery: got %s, want a pod's answer", answerOf(r))
	}
	if r, _ := ask(t, on, "udp", "www.example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		// The pods answer only cluster.local; an external name reaching
		// them gets SERVFAIL from their empty chain, not the VNet answer.
		t.Errorf("external name after recovery: got %s, want it sent to the pods again (SERVFAIL from them)", answerOf(r))
	}
}

// kubeProxyRules is a kube-proxy-style DNAT of ip:53 to the backends,
// chosen at random per conntrack flow.
func kubeProxyRules(ip string, backends ...string) string {
	var m []string
	for i, b := range backends {
		m = append(m, fmt.Sprintf("%d : %s", i, b))
	}
	return fmt.Sprintf(`table ip kubeproxy {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr %s meta l4proto { udp, tcp } th dport 53 dnat to numgen random mod %d map { %s }
	}
}
`, ip, len(backends), strings.Join(m, ", "))
}

// nftRules replaces the DNAT of ip in this network namespace, as kube-proxy
// does when the endpoints change; conntrack entries are kept.
func nftRules(t *testing.T, ip string, backends ...string) {
	t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader("flush chain ip kubeproxy output\n" + strings.Replace(kubeProxyRules(ip, backends...), "table ip kubeproxy {", "table ip kubeproxy {", 1))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// askMany sends n distinct names (name(i)) over workers concurrent clients,
// query i not before i/rate seconds from the start unless rate is 0, and
// counts the answers by A record (or rcode).
func askMany(t *testing.T, l listener, workers, n, rate int, name func(int) string) map[string]int {
	t.Helper()
	start := time.Now()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			local := map[string]int{}
			for i := w; i < n; i += workers {
				if rate > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
				}
				r, _ := ask(t, l, "udp", name(i), dns.TypeA)
				local[answerOf(r)]++
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return counts
}

// conntrackFlows counts the conntrack entries of UDP flows to ip, or -1 when
// the conntrack tool is missing.
func conntrackFlows(ip string) int {
	out, err := exec.Command("conntrack", "-L", "-p", "udp", "--orig-dst", ip).Output()
	if err != nil {
		return -1
	}
	return strings.Count(string(out), "\n")
}

// startInNetns starts a CoreDNS instance whose listening sockets are created
// in the named network namespace. The switch happens on a locked thread that
// is discarded if it cannot be switched back.
func startInNetns(name, corefile string) (*caddy.Instance, error) {
	type result struct {
		inst *caddy.Instance
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: err}
			return
		}
		inst, err := startCorefile(corefile)
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{inst, err}
	}()
	r := <-ch
	return r.inst, r.err
}
