// Package topo builds and removes the lab's network: a node, client pods,
// two CoreDNS pods behind a kube-proxy-style service address, and an
// external resolver, each in a network namespace of its own, wired with veth
// pairs through the node namespace, which routes between them.
//
//	pod1 10.244.1.2 ─┐                    ┌─ coredns-a 10.244.100.2
//	pod2 10.244.2.2 ─┼── node ────────────┼─ coredns-b 10.244.101.2
//	                 │  lo: 169.254.10.10 └─ azuredns  192.0.2.53
//	                 │      169.254.10.11 (localdns listeners)
//	                 │      169.254.10.12 (reference resolver, full lab)
//	                 │      10.224.0.4    (node IP)
//	                 │  nft: 10.0.0.10:53 -> numgen random mod 2 DNAT
//
// The service address 10.0.0.10 exists only as the nat rule kube-proxy's nft
// mode would install: a random choice per new conntrack flow between the two
// endpoints. Every address lives inside the lab's namespaces; nothing is
// routed to or from the machine's own network.
//
// Namespace and veth set-up is done with ip(8) and nft(8) from iproute2 and
// nftables: the lab needs exactly what an operator would type, and the
// commands appear verbatim in its log.
package topo

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
)

// Prefix starts the name of every namespace the lab creates; leftovers are
// recognised by it.
const Prefix = "ldlab-"

// Namespaces of the lab.
const (
	Node     = Prefix + "node"
	Pod1     = Prefix + "pod1"
	Pod2     = Prefix + "pod2"
	CoreDNSA = Prefix + "coredns-a"
	CoreDNSB = Prefix + "coredns-b"
	AzureDNS = Prefix + "azuredns"
)

// Addresses of the lab.
const (
	ServiceIP       = "10.0.0.10"
	NodeListener    = "169.254.10.10"
	ClusterListener = "169.254.10.11"
	// ReferenceListener is where the lab's reference resolver listens
	// (unbound, the machine's floor for the latency bars); the lab adds it
	// to the node's lo when it measures one.
	ReferenceListener = "169.254.10.12"
	NodeIP            = "10.224.0.4"
	AzureDNSIP        = "192.0.2.53"
)

// Peer is a namespace wired to the node by a veth pair.
type Peer struct {
	Netns string
	Veth  string // node-side interface name
	Addr  string // the peer's address (its side is eth0)
	Gw    string // the node side's address, the peer's default gateway
	Len   int    // prefix length of both
}

// Pods are the client pods.
var Pods = []Peer{
	{Netns: Pod1, Veth: "v-pod1", Addr: "10.244.1.2", Gw: "10.244.1.1", Len: 24},
	{Netns: Pod2, Veth: "v-pod2", Addr: "10.244.2.2", Gw: "10.244.2.1", Len: 24},
}

// CoreDNSPods are the central CoreDNS pods, the service's endpoints.
var CoreDNSPods = []Peer{
	{Netns: CoreDNSA, Veth: "v-coredns-a", Addr: "10.244.100.2", Gw: "10.244.100.1", Len: 24},
	{Netns: CoreDNSB, Veth: "v-coredns-b", Addr: "10.244.101.2", Gw: "10.244.101.1", Len: 24},
}

// Azure is the external resolver.
var Azure = Peer{Netns: AzureDNS, Veth: "v-azuredns", Addr: AzureDNSIP, Gw: "192.0.2.1", Len: 24}

// All returns every namespace of the lab, the node first.
func All() []string {
	out := []string{Node}
	for _, p := range peers() {
		out = append(out, p.Netns)
	}
	return out
}

func peers() []Peer {
	return slices.Concat(Pods, CoreDNSPods, []Peer{Azure})
}

// Run runs a command and returns its error with the command line and output.
func Run(args ...string) error {
	return RunInput(nil, args...)
}

// RunInput runs a command with stdin.
func RunInput(stdin []byte, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// In prefixes args to run inside netns.
func In(netns string, args ...string) []string {
	return append([]string{"ip", "netns", "exec", netns}, args...)
}

// Leftovers returns the lab namespaces that exist now.
func Leftovers() ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w", err)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], Prefix) {
			found = append(found, f[0])
		}
	}
	return found, nil
}

// Teardown deletes every lab namespace (their veths go with them). Processes
// still running inside must be stopped first, or the namespace outlives its
// name. It returns the first error after trying all.
func Teardown() error {
	found, err := Leftovers()
	if err != nil {
		return err
	}
	var first error
	for _, ns := range found {
		if err := Run("ip", "netns", "del", ns); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Build creates the namespaces, links, addresses, routes and the service
// DNAT. listenerAddrs adds the localdns listener addresses to the node's lo
// (false when localdns manages its own addresses).
func Build(listenerAddrs bool) error {
	var steps [][]string
	for _, ns := range All() {
		steps = append(steps, []string{"ip", "netns", "add", ns}, In(ns, "ip", "link", "set", "lo", "up"))
	}
	steps = append(steps,
		In(Node, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
		In(Node, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"),
		In(Node, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"),
		In(Node, "ip", "addr", "add", NodeIP+"/32", "dev", "lo"),
	)
	if listenerAddrs {
		steps = append(steps,
			In(Node, "ip", "addr", "add", NodeListener+"/32", "dev", "lo"),
			In(Node, "ip", "addr", "add", ClusterListener+"/32", "dev", "lo"),
		)
	}
	for _, p := range peers() {
		steps = append(steps,
			[]string{"ip", "link", "add", p.Veth, "netns", Node, "type", "veth", "peer", "name", "eth0", "netns", p.Netns},
			In(Node, "ip", "addr", "add", fmt.Sprintf("%s/%d", p.Gw, p.Len), "dev", p.Veth),
			In(Node, "ip", "link", "set", p.Veth, "up"),
			In(p.Netns, "ip", "addr", "add", fmt.Sprintf("%s/%d", p.Addr, p.Len), "dev", "eth0"),
			In(p.Netns, "ip", "link", "set", "eth0", "up"),
			In(p.Netns, "ip", "route", "add", "default", "via", p.Gw),
		)
	}
	// The node's own packets to the service CIDR need a route before the
	// nat OUTPUT hook rewrites and reroutes them, as on a real node.
	steps = append(steps, In(Node, "ip", "route", "add", "10.0.0.0/16", "via", CoreDNSPods[0].Addr, "src", NodeIP))
	for _, s := range steps {
		if err := Run(s...); err != nil {
			return fmt.Errorf("build lab network: %w", err)
		}
	}
	if err := RunInput([]byte(KubeProxyRules()), In(Node, "nft", "-f", "-")...); err != nil {
		return fmt.Errorf("install service rules: %w", err)
	}
	return nil
}

// KubeProxyRules is the nat ruleset kube-proxy's nft mode installs for a
// two-endpoint UDP/TCP service on port 53: a random endpoint per new flow,
// kept for the flow's lifetime by conntrack.
func KubeProxyRules() string {
	var b strings.Builder
	b.WriteString("table ip ldlab-kubeproxy {\n")
	var vmap []string
	for i, p := range CoreDNSPods {
		chain := "endpoint-" + strings.TrimPrefix(p.Netns, Prefix)
		fmt.Fprintf(&b, "\tchain %s {\n\t\tdnat to %s\n\t}\n", chain, p.Addr)
		vmap = append(vmap, fmt.Sprintf("%d : goto %s", i, chain))
	}
	fmt.Fprintf(&b, "\tchain service-kube-dns {\n\t\tnumgen random mod %d vmap { %s }\n\t}\n", len(CoreDNSPods), strings.Join(vmap, ", "))
	fmt.Fprintf(&b, "\tchain services {\n\t\tip daddr %s meta l4proto { tcp, udp } th dport 53 goto service-kube-dns\n\t}\n", ServiceIP)
	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n")
	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n")
	b.WriteString("}\n")
	return b.String()
}

// Upstreams are the addresses the fault scenario cuts off: both CoreDNS
// endpoints and the external resolver.
func Upstreams() []string {
	out := []string{Azure.Addr}
	for _, p := range CoreDNSPods {
		out = append(out, p.Addr)
	}
	return out
}

// CutUpstreams drops, on the node, every packet to the upstreams: for the
// node's own traffic (localdns) and for traffic it routes (pods). Nothing
// answers, not even with an ICMP error, as when the upstreams are gone.
func CutUpstreams() error {
	set := strings.Join(Upstreams(), ", ")
	rules := fmt.Sprintf(`table ip ldlab-fault {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr { %[1]s } drop
	}
	chain output {
		type filter hook output priority filter; policy accept;
		ip daddr { %[1]s } drop
	}
}
`, set)
	if err := RunInput([]byte(rules), In(Node, "nft", "-f", "-")...); err != nil {
		return fmt.Errorf("cut upstreams: %w", err)
	}
	return nil
}

// RestoreUpstreams removes the cut.
func RestoreUpstreams() error {
	if err := Run(In(Node, "nft", "delete", "table", "ip", "ldlab-fault")...); err != nil {
		return fmt.Errorf("restore upstreams: %w", err)
	}
	return nil
}

// LockPath is the lock a process holds while it owns the lab's namespaces.
const LockPath = "/run/ldlab.lock"

// Lock takes LockPath without waiting: only one lab (or topology test) may
// own the namespaces, or one would tear down the other's. Close the file to
// release it.
func Lock() (*os.File, error) {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another lab holds %s: %w", LockPath, err)
	}
	return f, nil
}
