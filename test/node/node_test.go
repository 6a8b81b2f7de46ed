// Package node tests localdns's node integration end to end: the built
// binary, run with `ip netns exec` inside a network namespace that stands in
// for a node, with a second namespace as a pod joined to it by a veth pair.
// It checks what an operator sees on the node: the listener addresses and the
// nftables table appear, come back when removed by hand, never duplicate and
// go away again; DNS bypasses conntrack; a restart under socket activation
// loses no query; readiness and watchdog notifications follow the self-probe;
// and each mode (Required, Preferred, Disabled) leaves the node as it should.
//
// Every test needs root (namespaces, addresses, nftables) and skips without
// it. Every upstream is a server the test starts inside the node namespace;
// no query leaves the namespaces the tests create.
package node

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

// The AKS listener addresses the tests' profiles use.
const (
	nodeListener    = "169.254.10.10"
	clusterListener = "169.254.10.11"
	probeName       = "health-check.localdns.local."
)

// Pod topology (TEST-NET-1): the node's end of the veth and the pod.
const (
	nodeVethIP = "192.0.2.1"
	podIP      = "192.0.2.2"
)

var binary string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		// Nothing to build for: every test skips.
		os.Exit(m.Run())
	}
	removeStaleNamespaces()
	testbin.Main(m, &binary)
}

// removeStaleNamespaces deletes namespaces left by an earlier run of these
// tests that was killed before its cleanups ran (a -timeout panic): their
// names carry the pid of a test process that no longer exists.
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) != 4 || parts[0] != "ldnode" {
			continue
		}
		pid, err := strconv.Atoi(parts[2])
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", f[0]).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "removing stale namespace %s: %v: %s\n", f[0], err, out)
		} else {
			fmt.Fprintf(os.Stderr, "removed stale namespace %s of an earlier run\n", f[0])
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces, addresses and nftables tables")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed: %v", tool, err)
		}
	}
}

var nsSeq atomic.Int32

// newNS creates a named network namespace with lo up and IPv6 off (neighbour
// discovery and MLD would add conntrack entries and noise of their own) and
// deletes it when the test ends.
func newNS(t *testing.T, role string) string {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("ldnode-%s-%d-%d", role, os.Getpid(), nsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	inNS(t, name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return name
}

// newPod creates a pod namespace joined to node by a veth pair: node side
// 192.0.2.1/24, pod side eth0 192.0.2.2/24 with its default route via the
// node, as a pod reaches the node's listeners through its CNI.
func newPod(t *testing.T, node string) string {
	t.Helper()
	pod := newNS(t, "pod")
	run(t, "ip", "-n", node, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", pod)
	run(t, "ip", "-n", node, "addr", "add", nodeVethIP+"/24", "dev", "vpod")
	run(t, "ip", "-n", node, "link", "set", "vpod", "up")
	run(t, "ip", "-n", pod, "addr", "add", podIP+"/24", "dev", "eth0")
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", pod, "route", "add", "default", "via", nodeVethIP)
	// The kernel raises the carrier of a veth asynchronously once both ends
	// are up; a node snapshot taken before it settles differs from every
	// later one ("NO-CARRIER ... state DOWN").
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(run(t, "ip", "-n", node, "link", "show", "vpod"), "state UP") {
		if time.Now().After(deadline) {
			t.Fatalf("veth vpod in %s not up within 5s: %s", node, run(t, "ip", "-n", node, "link", "show", "vpod"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return pod
}

// run runs a command and returns its combined output; it fails the test on
// error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs a command inside the named namespace.
func inNS(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// withNS runs f on an OS thread switched into the named namespace; sockets f
// opens stay in that namespace. Goroutines f starts do not run in it.
func withNS(t testing.TB, ns string, f func() error) error {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer h.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and is discarded when this goroutine ends.
		return fmt.Errorf("leave netns %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// upstreams are the cluster CoreDNS and VNet DNS stand-ins: testdns servers
// on 127.0.0.1 inside the node namespace.
type upstreams struct {
	cluster, vnet *testdns.Upstream
}

func startUpstreams(t *testing.T, node string) upstreams {
	t.Helper()
	var u upstreams
	if err := withNS(t, node, func() error {
		u.cluster = testdns.Start(t, "192.0.2.10")
		u.vnet = testdns.Start(t, "192.0.2.20")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return u
}

// profile is what a test varies in the node profile.
type profile struct {
	Mode         string // Required, Preferred, Disabled
	Cluster      string // upstream ip:port
	VNet         string
	Reconcile    time.Duration
	ReplyNotrack bool
	Dir          string // state dir and cache snapshot live here
}

// write writes the profile to dir/localdns.yaml and returns the path.
func (p profile) write(t *testing.T) string {
	t.Helper()
	if p.Mode == "" {
		p.Mode = "Required"
	}
	if p.Reconcile == 0 {
		p.Reconcile = 2 * time.Second
	}
	text := fmt.Sprintf(`# test/node profile
mode: %s
listeners: {node: %s, cluster: %s}
port: 53
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: true, reconcileInterval: %s, replyNotrack: %t, stateDir: %s}
metrics: 127.0.0.1:9253
cache: {snapshot: %s}
`, p.Mode, nodeListener, clusterListener, p.Cluster, p.VNet, p.Reconcile, p.ReplyNotrack,
		filepath.Join(p.Dir, "run"), filepath.Join(p.Dir, "cache.snapshot"))
	path := filepath.Join(p.Dir, "localdns.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// newProfile returns a Required profile forwarding to u.
func newProfile(t *testing.T, u upstreams) profile {
	return profile{Mode: "Required", Cluster: u.cluster.Addr, VNet: u.vnet.Addr, ReplyNotrack: true, Dir: t.TempDir()}
}

// proc is a localdns process.
type proc struct {
	cmd  *exec.Cmd
	log  testbin.Log
	done chan struct{}
	err  error // from Wait, valid after done
}

// Log returns what the process logged so far.
func (p *proc) Log() string { return p.log.String() }

// runOpts are the extras of a `localdns run` process.
type runOpts struct {
	env   []string   // added to the environment
	files []*os.File // passed as fds 3, 4, ...
	// listenPID sets LISTEN_PID to the process's own pid (through sh), as
	// systemd does for a socket-activated service.
	listenPID bool
}

// startRun starts `localdns run --config cfg` in namespace ns. The process
// is killed, if still running, when the test ends.
func startRun(t *testing.T, ns, cfg string, o runOpts) *proc {
	t.Helper()
	args := []string{"netns", "exec", ns}
	if o.listenPID {
		// ip netns exec and sh both exec, so $$ is localdns's pid.
		args = append(args, "/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`)
	}
	args = append(args, binary, "run", "--config", cfg)
	p := &proc{cmd: exec.Command("ip", args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	p.cmd.Env = append(os.Environ(), o.env...)
	p.cmd.ExtraFiles = o.files
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("localdns (pid %d) log:\n%s", p.cmd.Process.Pid, p.Log())
		}
	})
	return p
}

// runToExit runs `localdns run` in ns and returns its exit code once it
// exits by itself.
func runToExit(t *testing.T, ns, cfg string, timeout time.Duration) (int, *proc) {
	t.Helper()
	p := startRun(t, ns, cfg, runOpts{})
	code, ok := p.wait(timeout)
	if !ok {
		t.Fatalf("localdns run did not exit within %s; log:\n%s", timeout, p.Log())
	}
	return code, p
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code (-1 when killed by a signal).
func (p *proc) wait(timeout time.Duration) (int, bool) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, false
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0, true
	case errors.As(p.err, &ee):
		return ee.ExitCode(), true
	}
	return -1, true
}

// stop sends SIGTERM and requires a clean exit within 10 s.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	code, ok := p.wait(10 * time.Second)
	if !ok {
		t.Fatalf("localdns did not exit within 10s of SIGTERM; log:\n%s", p.Log())
	}
	if code != 0 {
		t.Fatalf("localdns exited %d after SIGTERM; log:\n%s", code, p.Log())
	}
}

// exchange sends one query from inside ns.
func exchange(t testing.TB, ns, network, addr, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	var r *dns.Msg
	err := withNS(t, ns, func() error {
		c := &dns.Client{Net: network, Timeout: timeout}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		var err error
		r, _, err = c.Exchange(m, addr)
		return err
	})
	return r, err
}

// answered reports whether the probe name gets a NOERROR answer on addr from
// inside ns.
func answered(t testing.TB, ns, network, addr string, timeout time.Duration) bool {
	r, err := exchange(t, ns, network, addr, probeName, dns.TypeA, timeout)
	return err == nil && r.Rcode == dns.RcodeSuccess
}

// waitServing waits until both listeners answer the probe over UDP and TCP
// from inside ns.
func waitServing(t *testing.T, ns string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, l := range []string{nodeListener, clusterListener} {
		for _, network := range []string{"udp", "tcp"} {
			for !answered(t, ns, network, l+":53", 300*time.Millisecond) {
				select {
				case <-p.done:
					t.Fatalf("localdns exited before serving; log:\n%s", p.Log())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s/%s not answering within 15s; log:\n%s", l, network, p.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// nodeState is what an operator would compare on a node: every address and
// the whole nftables ruleset.
func nodeState(t *testing.T, ns string) string {
	t.Helper()
	addrs := run(t, "ip", "-n", ns, "addr", "show")
	rules := inNS(t, ns, "nft", "list", "ruleset")
	return "# ip addr show\n" + addrs + "# nft list ruleset\n" + rules
}

// listenerAddrs counts each listener address on any link of ns.
func listenerAddrs(t *testing.T, ns string) map[string]int {
	t.Helper()
	out := run(t, "ip", "-n", ns, "-o", "-4", "addr", "show")
	counts := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		for _, a := range []string{nodeListener, clusterListener} {
			if strings.Contains(line, " "+a+"/") {
				counts[a]++
			}
		}
	}
	return counts
}

// hasTable reports whether the nftables table inet localdns exists in ns.
func hasTable(t *testing.T, ns string) bool {
	t.Helper()
	return strings.Contains(inNS(t, ns, "nft", "list", "tables"), "table inet localdns")
}

var ruleRE = regexp.MustCompile(`(?m)^\s+ip [sd]addr .* notrack`)

// notrackRules returns the number of notrack rules in inet localdns (0
// without the table) and the table's listing.
func notrackRules(t *testing.T, ns string) (int, string) {
	t.Helper()
	if !hasTable(t, ns) {
		return 0, ""
	}
	out := inNS(t, ns, "nft", "list", "table", "inet", "localdns")
	return len(ruleRE.FindAllString(out, -1)), out
}

// conntrackCount reads nf_conntrack_count in ns.
func conntrackCount(t *testing.T, ns string) int {
	t.Helper()
	s := strings.TrimSpace(inNS(t, ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("nf_conntrack_count %q: %v", s, err)
	}
	return n
}

// eventually polls cond every 50 ms until it holds or timeout passes, and
// returns how long it took and whether it held.
func eventually(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// holdAddr adds addr/32 to lo in ns, as someone other than localdns would.
func holdAddr(t *testing.T, ns, addr string) {
	t.Helper()
	run(t, "ip", "-n", ns, "addr", "add", addr+"/32", "dev", "lo")
}

// listenIn opens a socket inside ns.
func listenIn(t *testing.T, ns string, open func() (any, error)) any {
	t.Helper()
	var c any
	if err := withNS(t, ns, func() (err error) {
		c, err = open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if cl, ok := c.(interface{ Close() error }); ok {
		t.Cleanup(func() { cl.Close() })
	}
	return c
}

// udpIn binds a UDP socket on addr inside ns.
func udpIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	return listenIn(t, ns, func() (any, error) { return net.ListenPacket("udp4", addr) }).(*net.UDPConn)
}

var counterRE = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// udpStats reads the Udp counters of /proc/net/snmp in ns (InErrors,
// RcvbufErrors, NoPorts, ...).
func udpStats(t *testing.T, ns string) map[string]int {
	t.Helper()
	var names, values []string
	for _, line := range strings.Split(inNS(t, ns, "cat", "/proc/net/snmp"), "\n") {
		if !strings.HasPrefix(line, "Udp: ") {
			continue
		}
		if names == nil {
			names = strings.Fields(line)[1:]
		} else {
			values = strings.Fields(line)[1:]
		}
	}
	out := map[string]int{}
	for i := range min(len(names), len(values)) {
		out[names[i]], _ = strconv.Atoi(values[i])
	}
	return out
}
