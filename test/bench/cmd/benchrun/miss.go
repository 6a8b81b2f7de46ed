package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/test/bench/upstream"
)

// The miss benchmark (-miss) measures the path of a cache miss: unique names
// only, so every query goes upstream. It builds, in network namespaces it
// creates and deletes,
//
//	ns node: the engine under test on 127.0.0.1, dnsperf, and a
//	         kube-proxy-style nftables DNAT of the service IP
//	         10.96.0.10:53 (numgen random mod 2 per conntrack flow) to
//	         two pods, with a counter per pod after the DNAT;
//	ns pods: two "CoreDNS pods" (this program with -pod: the bench
//	         upstream, answering A for every name) on 192.0.2.11 and
//	         192.0.2.12.
//
// and alternates stock CoreDNS (cache + forward) and localdns (nodecache +
// upstream) in one run, reporting for each the miss QPS, the conntrack
// entries left in the node namespace, the busiest pod's share and the
// server's CPU time per miss.
const (
	missServiceIP = "10.96.0.10"
	missPod1      = "192.0.2.11"
	missPod2      = "192.0.2.12"
)

type missRound struct {
	qps       float64
	completed uint64
	lost      uint64
	conntrack int     // entries in the node namespace after the run
	flows     int     // of them, UDP flows to the service IP
	share     float64 // the busiest pod's share of the queries it got
	cpuPer    time.Duration
}

// servePod is the -pod child: the bench upstream on addr inside a network
// namespace, until killed.
func servePod(addr string) error {
	up, err := upstream.StartInNamespace(addr, net.IPv4(192, 0, 2, 53), 3600)
	if err != nil {
		return err
	}
	defer up.Close()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	return nil
}

func missBench(ctx context.Context, cfg config, dir string, ps *procs) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the miss benchmark needs root: it creates network namespaces and nftables rules")
	}
	for _, tool := range []string{"ip", "nft", "conntrack", "dig"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	node := fmt.Sprintf("ldns-miss-node-%d", os.Getpid())
	pods := fmt.Sprintf("ldns-miss-pods-%d", os.Getpid())
	defer exec.Command("ip", "netns", "del", node).Run()
	defer exec.Command("ip", "netns", "del", pods).Run()
	if err := missNetwork(node, pods); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, ip := range []string{missPod1, missPod2} {
		p, err := ps.start([]string{"ip", "netns", "exec", pods, self, "-pod", ip + ":53"}, dir+"/pod-"+ip+".log")
		if err != nil {
			return err
		}
		defer ps.stop(p, 2*time.Second)
	}

	engines := map[string]missEngine{}
	for _, n := range cfg.engines {
		e, err := cfg.engine(n)
		if err != nil {
			return err
		}
		engines[e.name] = missEngineOf(cfg, e)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range engines {
			if !yield(n) {
				return
			}
		}
	})
	fmt.Printf("workload: %d unique A names per engine and round (every query a miss), %d rounds, engines alternating\n", cfg.missNames, cfg.rounds)
	fmt.Printf("network: node netns %s, DNAT %s:53 -> numgen random mod 2 -> %s | %s (pods netns %s)\n", node, missServiceIP, missPod1, missPod2, pods)
	fmt.Printf("client: dnsperf %s -n 1 (one pass over the names)\n", strings.Join(cfg.missClient, " "))
	for _, n := range names {
		fmt.Printf("engine %s: %s\n  Corefile: %s\n", n, engines[n].desc, strings.ReplaceAll(engines[n].corefile(0), "\n", "\n  "))
	}

	results := map[string][]missRound{}
	for r := range cfg.rounds {
		order := slices.Clone(names)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, n := range order {
			res, err := missRun(ctx, cfg, dir, node, ps, engines[n], r)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, n, err)
			}
			fmt.Printf("round %d %-8s: %7.0f misses/s (%d answered, %d lost), conntrack %5d entries (%5d UDP flows to the service), busiest pod %5.1f%%, CPU %s per miss\n",
				r+1, n, res.qps, res.completed, res.lost, res.conntrack, res.flows, 100*res.share, us(res.cpuPer))
			results[n] = append(results[n], res)
		}
	}

	fmt.Println("\nmedian over rounds:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "engine\tmisses/s\tconntrack entries\tflows to service\tbusiest pod\tCPU per miss\t")
	med := map[string]float64{}
	for _, n := range names {
		rs := results[n]
		pick := func(f func(missRound) float64) float64 {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = f(r)
			}
			return median(xs)
		}
		med[n] = pick(func(r missRound) float64 { return r.qps })
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.1f%%\t%s\t\n", n, med[n],
			pick(func(r missRound) float64 { return float64(r.conntrack) }),
			pick(func(r missRound) float64 { return float64(r.flows) }),
			100*pick(func(r missRound) float64 { return r.share }),
			us(time.Duration(pick(func(r missRound) float64 { return float64(r.cpuPer) }))))
	}
	tw.Flush()
	if med["stock"] > 0 && med["localdns"] > 0 {
		fmt.Printf("miss QPS ratio localdns/stock: %.2fx\n", med["localdns"]/med["stock"])
	}
	return nil
}

// missEngine is an engine with its miss-path Corefile.
type missEngine struct {
	engine
	forward string // the forwarding directive (block)
}

func missEngineOf(cfg config, e engine) missEngine {
	m := missEngine{engine: e, forward: "forward . " + missServiceIP + ":53"}
	if e.name == "localdns" || e.name == "nodecache-caddy" {
		m.forward = cfg.missUpstream
	}
	return m
}

func (e missEngine) corefile(port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n\tbind 127.0.0.1\n", port)
	if e.extra != "" {
		fmt.Fprintf(&b, "\t%s\n", e.extra)
	}
	fmt.Fprintf(&b, "\t%s\n\t%s\n}\n", e.cache, e.forward)
	return b.String()
}

// missNetwork creates the two namespaces, the link between them and the
// DNAT with its per-pod counters.
func missNetwork(node, pods string) error {
	steps := [][]string{
		{"ip", "netns", "add", node},
		{"ip", "netns", "add", pods},
		{"ip", "-n", node, "link", "add", "vn", "type", "veth", "peer", "name", "vp", "netns", pods},
		{"ip", "-n", node, "link", "set", "lo", "up"},
		{"ip", "-n", node, "link", "set", "vn", "up"},
		{"ip", "-n", node, "addr", "add", "192.0.2.1/24", "dev", "vn"},
		{"ip", "-n", node, "route", "add", "10.96.0.0/12", "dev", "vn"},
		{"ip", "-n", pods, "link", "set", "lo", "up"},
		{"ip", "-n", pods, "link", "set", "vp", "up"},
		{"ip", "-n", pods, "addr", "add", missPod1 + "/24", "dev", "vp"},
		{"ip", "-n", pods, "addr", "add", missPod2 + "/24", "dev", "vp"},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	rules := fmt.Sprintf(`table ip kubeproxy {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr %s meta l4proto { udp, tcp } th dport 53 dnat to numgen random mod 2 map { 0 : %s, 1 : %s }
	}
	chain post {
		type filter hook postrouting priority 100; policy accept;
		ip daddr %s udp dport 53 counter
		ip daddr %s udp dport 53 counter
	}
}
`, missServiceIP, missPod1, missPod2, missPod1, missPod2)
	cmd := exec.Command("ip", "netns", "exec", node, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, out)
	}
	return nil
}

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// podCounts reads the two pods' packet counters.
func podCounts(node string) ([]uint64, error) {
	out, err := exec.Command("ip", "netns", "exec", node, "nft", "list", "chain", "ip", "kubeproxy", "post").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list: %w", err)
	}
	var n []uint64
	for _, m := range counterRE.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		n = append(n, v)
	}
	if len(n) != 2 {
		return nil, fmt.Errorf("nft list: %d counters, want 2:\n%s", len(n), out)
	}
	return n, nil
}

// missRun measures one engine once: a fresh server, a fresh conntrack table
// and counters, one pass of dnsperf over names no run used before.
func missRun(ctx context.Context, cfg config, dir, node string, ps *procs, e missEngine, r int) (missRound, error) {
	var res missRound
	if out, err := exec.Command("ip", "netns", "exec", node, "conntrack", "-F").CombinedOutput(); err != nil && !strings.Contains(string(out), "0 flow entries") {
		return res, fmt.Errorf("conntrack -F: %w: %s", err, out)
	}
	if out, err := exec.Command("ip", "netns", "exec", node, "nft", "reset", "counters", "table", "ip", "kubeproxy").CombinedOutput(); err != nil {
		return res, fmt.Errorf("nft reset counters: %w: %s", err, out)
	}
	port := 1053
	conf := fmt.Sprintf("%s/miss-%s-%d.Corefile", dir, e.name, r)
	if err := os.WriteFile(conf, []byte(e.corefile(port)), 0o644); err != nil {
		return res, err
	}
	logPath := fmt.Sprintf("%s/miss-%s-%d.log", dir, e.name, r)
	proc, err := ps.start(append([]string{"ip", "netns", "exec", node}, e.argv(conf)...), logPath)
	if err != nil {
		return res, err
	}
	defer ps.stop(proc, 2*time.Second)
	if err := waitDNSIn(ctx, node, port, proc); err != nil {
		out, _ := os.ReadFile(logPath)
		return res, fmt.Errorf("%w\n%s", err, tail(out, 2000))
	}
	// The readiness probe's own flows and counters are not the run's.
	exec.Command("ip", "netns", "exec", node, "conntrack", "-F").Run()
	exec.Command("ip", "netns", "exec", node, "nft", "reset", "counters", "table", "ip", "kubeproxy").Run()

	queries := fmt.Sprintf("%s/miss-%s-%d.names", dir, e.name, r)
	if err := writeNames(queries, fmt.Sprintf("m%%07d.r%d.%s.miss.bench.example.", r, e.name), cfg.missNames); err != nil {
		return res, err
	}
	defer os.Remove(queries)
	c0, err := takeCPU(proc.pid())
	if err != nil {
		return res, err
	}
	args := append([]string{"netns", "exec", node, "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", queries, "-n", "1"}, cfg.missClient...)
	perf, err := runDNSPerf(ctx, "ip", args...)
	if err != nil {
		return res, err
	}
	c1, err := takeCPU(proc.pid())
	if err != nil {
		return res, err
	}
	res.qps, res.completed, res.lost = perf.QPS, perf.Completed, perf.Lost
	if perf.Completed > 0 {
		res.cpuPer = time.Duration(float64(c1.server-c0.server) * float64(time.Second) / clkTck / float64(perf.Completed))
	}
	out, err := exec.Command("ip", "netns", "exec", node, "conntrack", "-C").Output()
	if err != nil {
		return res, fmt.Errorf("conntrack -C: %w", err)
	}
	res.conntrack, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	out, _ = exec.Command("ip", "netns", "exec", node, "conntrack", "-L", "-p", "udp", "--orig-dst", missServiceIP).Output()
	res.flows = strings.Count(string(out), "\n")
	n, err := podCounts(node)
	if err != nil {
		return res, err
	}
	if n[0]+n[1] > 0 {
		res.share = float64(max(n[0], n[1])) / float64(n[0]+n[1])
	}
	return res, nil
}

// waitDNSIn waits until the server answers on 127.0.0.1:port inside the
// namespace (a name under the bench zone, which reaches the pods).
func waitDNSIn(ctx context.Context, ns string, port int, c *child) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("server exited before answering")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		out, err := exec.Command("ip", "netns", "exec", ns, "dig", "+tries=1", "+time=1", "+short", "-p", strconv.Itoa(port), "@127.0.0.1", "ready.miss.bench.example.", "A").Output()
		if err == nil && strings.TrimSpace(string(out)) != "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no answer on 127.0.0.1:%d in %s within 20s", port, ns)
}
