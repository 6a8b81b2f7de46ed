// Package systemd runs the shipped units on a whole booted systemd: this
// machine's root file system, behind an overlay, booted with systemd-nspawn
// in its own network namespace, with a pod and the upstreams in namespaces
// wired to it by veth pairs. See README.md.
package systemd

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

var localdnsBin string

// TestMain builds localdns only when the test can run.
func TestMain(m *testing.M) {
	if skipReason() != "" {
		os.Exit(m.Run())
	}
	testbin.Main(m, &localdnsBin)
}

func skipReason() string {
	if os.Geteuid() != 0 {
		return "needs root (overlay mount, systemd-nspawn, network namespaces)"
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter", "unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not installed (Debian: systemd-container, util-linux, iproute2)"
		}
	}
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		return "no /lib/systemd/systemd to boot"
	}
	return ""
}

const (
	clusterListener = "169.254.10.11:53"
	nodeListener    = "169.254.10.10:53"
	clusterDNS      = "10.78.0.2"
	vnetDNS         = "10.78.0.3"
	profilePath     = "/etc/localdns/localdns.yaml"
)

const profile = `mode: Required
clusterDNS: [` + clusterDNS + `]
vnetDNS: [` + vnetDNS + `]
network:
  manage: true
metrics: 127.0.0.1:9253
health: 127.0.0.1:9254
`

// The shipped WatchdogSec=30 would make the stall scenario last 30 s.
const testDropIn = `[Service]
WatchdogSec=5
`

func TestNodeUnderNspawn(t *testing.T) {
	if r := skipReason(); r != "" {
		t.Skip(r)
	}
	if testing.Short() {
		t.Skip("boots a container; skipped with -short")
	}
	n := bootNode(t)
	clusterUp := n.startUpstream(t, clusterDNS)
	n.startUpstream(t, vnetDNS)
	n.install(t)

	t.Run("serve", func(t *testing.T) {
		n.waitLocaldns(t, 30*time.Second)
		name := "kubernetes.default.svc.cluster.local."
		r := n.pod.query(t, clusterListener, name, time.Second)
		checkAnswer(t, r, clusterDNS, "localdns-pod")
		before := clusterUp.Count(name)
		r = n.pod.query(t, clusterListener, name, time.Second)
		checkAnswer(t, r, clusterDNS, "localdns-pod")
		if after := clusterUp.Count(name); after != before {
			t.Errorf("second query reached the cluster DNS (%d -> %d queries): not a cache hit", before, after)
		}
		r = n.pod.query(t, nodeListener, "example.com.", time.Second)
		checkAnswer(t, r, vnetDNS, "localdns")
	})

	t.Run("restart-kill-reload under load", func(t *testing.T) {
		l := startLoad(n.pod, 500)
		p := startProber(n.pod)
		restarts := n.nrestarts(t)
		var ops []string
		op := func(what string) { ops = append(ops, fmt.Sprintf("%s at %.2fs", what, time.Since(l.start).Seconds())) }
		op("restart")
		n.must(t, "systemctl restart localdns.service")
		n.waitLocaldns(t, 30*time.Second)
		op("SIGKILL")
		killAt := time.Since(l.start)
		n.must(t, `kill -KILL "$(systemctl show -p MainPID --value localdns.service)"`)
		n.waitRestarts(t, restarts+1, 30*time.Second)
		n.waitLocaldns(t, 30*time.Second)
		op("reload")
		n.must(t, "systemctl reload localdns.service")
		n.waitLocaldns(t, 30*time.Second)
		time.Sleep(time.Second) // load after the reload, too
		gap := p.stop()
		sent, lost, late, maxLat := l.stop()
		t.Logf("restart + SIGKILL + reload at 500 QPS: %d queries, %d lost (no answer in 5 s), %d answered after > 1 s, slowest %.2f s; prober gap %.2f s",
			sent, lost, late, maxLat.Seconds(), gap.Seconds())
		// A SIGKILL loses the queries the daemon had already read and not
		// yet answered: the socket cannot give them back. Nothing else may
		// be lost.
		var atKill, other []time.Duration
		for _, d := range l.lostAt {
			if d >= killAt-100*time.Millisecond && d <= killAt+500*time.Millisecond {
				atKill = append(atKill, d)
			} else {
				other = append(other, d)
			}
		}
		t.Logf("lost queries sent at %v (in flight at the SIGKILL: %d); %v", l.lostAt, len(atKill), ops)
		if len(other) != 0 {
			t.Errorf("%d of %d queries lost away from the SIGKILL, sent at %v; %v", len(other), sent, other, ops)
		}
	})

	t.Run("watchdog replaces a stalled daemon", func(t *testing.T) {
		restarts := n.nrestarts(t)
		since := n.must(t, "date +%s")
		p := startProber(n.pod)
		n.must(t, `kill -STOP "$(systemctl show -p MainPID --value localdns.service)"`)
		n.waitRestarts(t, restarts+1, 30*time.Second)
		n.waitLocaldns(t, 30*time.Second)
		gap := p.stop()
		t.Logf("watchdog (WatchdogSec=5) after SIGSTOP: prober gap %.2f s", gap.Seconds())
		if j := n.out(t, "journalctl -u localdns.service --no-pager --since @"+since); !strings.Contains(j, "Failed with result 'watchdog'") {
			t.Errorf("the stop was not the watchdog's:\n%s", j)
		}
	})

	t.Run("broken profile until the start limit", func(t *testing.T) {
		// A full crash loop of StartLimitBurst starts, not what is left of
		// the earlier restarts' budget.
		n.must(t, "systemctl reset-failed localdns.service localdns.socket")
		n.put(t, profilePath, []byte(profile+"port: 70000\n"), 0o644)
		p := startProber(n.pod)
		n.out(t, "systemctl restart localdns.service") // fails: that is the point
		n.waitFor(t, 60*time.Second, "localdns.socket failed with service-start-limit-hit", func() (bool, string) {
			s := n.out(t, "systemctl show -p ActiveState -p Result localdns.socket; systemctl show -p ActiveState -p Result -p NRestarts localdns.service")
			return strings.Contains(s, "Result=service-start-limit-hit"), s
		})
		time.Sleep(time.Second) // still resolving after the socket's teardown
		gap := p.stop()
		t.Logf("broken profile, crash loop to the start limit: prober gap %.2f s (%d probes answered)", gap.Seconds(), p.answered())
		if gap > 2*time.Second {
			t.Errorf("pod DNS gap %.2f s during the crash loop, want at most 2 s", gap.Seconds())
		}
		if tables := n.out(t, "nft list tables"); !strings.Contains(tables, "table inet localdns-fallback") {
			t.Errorf("no fallback table after the start limit:\n%s", tables)
		}
		r := n.pod.query(t, clusterListener, "after-limit.example.", time.Second)
		checkAnswer(t, r, clusterDNS, "")
	})

	t.Run("fixed profile serves again", func(t *testing.T) {
		n.put(t, profilePath, []byte(profile), 0o644)
		n.must(t, "systemctl reset-failed localdns.service localdns.socket && systemctl start localdns.socket localdns.service")
		n.waitLocaldns(t, 30*time.Second)
		tables := n.out(t, "nft list tables")
		if strings.Contains(tables, "localdns-fallback") || !strings.Contains(tables, "table inet localdns") {
			t.Errorf("want table inet localdns and no fallback, have:\n%s", tables)
		}
	})

	t.Run("orphan in the cgroup", func(t *testing.T) {
		cg := n.out(t, "systemctl show -p ControlGroup --value localdns.service")
		procs := "/sys/fs/cgroup" + cg + "/cgroup.procs"
		if n.out(t, "stat -fc %T /sys/fs/cgroup") != "cgroup2fs" {
			procs = "/sys/fs/cgroup/systemd" + cg + "/cgroup.procs"
		}
		orphan := n.must(t, `sleep 600 </dev/null >/dev/null 2>&1 & echo $! > "$1" && echo $!`, procs)
		if !strings.Contains(n.out(t, `cat "$1"`, procs), orphan) {
			t.Fatalf("orphan %s is not in %s", orphan, procs)
		}
		restarts := n.nrestarts(t)
		p := startProber(n.pod)
		n.must(t, `kill -KILL "$(systemctl show -p MainPID --value localdns.service)"`)
		n.waitRestarts(t, restarts+1, 30*time.Second)
		n.waitLocaldns(t, 30*time.Second)
		gap := p.stop()
		state := n.out(t, `grep -h State: /proc/"$1"/status && cat /proc/"$1"/cgroup || echo gone`, orphan)
		t.Logf("SIGKILL with an orphan in the cgroup: restarted, prober gap %.2f s; the orphan now: %s", gap.Seconds(), state)
	})

	t.Run("stop and uninstall", func(t *testing.T) {
		p := startProber(n.pod)
		n.must(t, "systemctl stop localdns.socket localdns.service")
		r := n.pod.query(t, clusterListener, "stopped.example.", time.Second)
		checkAnswer(t, r, clusterDNS, "")
		gap := p.stop()
		t.Logf("stop of both units: prober gap %.2f s", gap.Seconds())
		if gap > 2*time.Second {
			t.Errorf("pod DNS gap %.2f s at stop, want at most 2 s", gap.Seconds())
		}

		n.must(t, "localdns teardown --purge --config "+profilePath)
		n.must(t, "systemctl disable localdns.socket localdns.service")
		n.must(t, `rm -rf /usr/bin/localdns /etc/localdns /etc/systemd/system/localdns.service /etc/systemd/system/localdns.socket \
			/etc/systemd/system/localdns.slice /etc/systemd/system/localdns.service.d /var/lib/localdns /run/localdns && systemctl daemon-reload`)
		if s := n.out(t, "nft list ruleset"); strings.Contains(s, "localdns") {
			t.Errorf("nftables still has localdns after the uninstall:\n%s", s)
		}
		if s := n.out(t, "ip -o addr"); strings.Contains(s, "169.254.10.") {
			t.Errorf("a listener address is left after the uninstall:\n%s", s)
		}
		if r, err := n.pod.exchange(clusterListener, newQuery("uninstalled.example."), time.Second); err == nil {
			t.Errorf("pod still gets an answer after the uninstall: %v", r)
		} else {
			t.Logf("after the uninstall the pod's query fails as before the install: %v", err)
		}
	})

	t.Run("a localdns that never starts", func(t *testing.T) {
		// A binary that cannot run at all (here: the service runs
		// /bin/false instead), on a node installed from scratch: the
		// socket unit's fallback answers the pods from its start on.
		n.put(t, "/etc/systemd/system/localdns.service.d/zz-never.conf", []byte("[Service]\nExecStart=\nExecStart=/bin/false\n"), 0o644)
		n.installFiles(t)
		n.out(t, "systemctl enable --now localdns.socket localdns.service") // the service fails: that is the point
		n.waitFor(t, 10*time.Second, "localdns.socket active", func() (bool, string) {
			s := n.out(t, "systemctl is-active localdns.socket")
			return s == "active", s
		})
		p := startProber(n.pod)
		n.waitFor(t, 60*time.Second, "localdns.service given up at its start limit", func() (bool, string) {
			s := n.out(t, "systemctl show -p Result localdns.service localdns.socket")
			return strings.Contains(s, "start-limit-hit"), s
		})
		time.Sleep(time.Second)
		gap := p.stop()
		t.Logf("a localdns that never starts: prober gap %.2f s from the socket's start (%d probes answered)", gap.Seconds(), p.answered())
		if gap > time.Second {
			t.Errorf("pod DNS gap %.2f s with a localdns that never starts, want none (the fallback from the socket's start)", gap.Seconds())
		}
		if tables := n.out(t, "nft list tables"); !strings.Contains(tables, "table inet localdns-fallback") || strings.Contains(tables, "table inet localdns\n") {
			t.Errorf("want only the fallback table:\n%s", tables)
		}
		r := n.pod.query(t, clusterListener, "never.example.", time.Second)
		checkAnswer(t, r, clusterDNS, "")
	})
}

// node is the booted container and the namespaces around it.
type node struct {
	pid   int       // the container's PID 1, in this PID namespace
	pod   *nsThread // the pod's network namespace
	up    *nsThread // the upstreams' network namespace
	podNS string    // the pod namespace's name, for ip netns exec
}

func bootNode(t *testing.T) *node {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	up := filepath.Join(dir, "up")
	for _, d := range []string{root, up} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The mounts live in a private mount namespace that dies with nspawn.
	// basic.target rather than the default multi-user.target: none of this
	// machine's own services (databases, prometheus, unbound) start.
	script := `set -e
mount -t tmpfs tmpfs "$2"
mkdir "$2/u" "$2/w"
mount -t overlay overlay -o "lowerdir=/,upperdir=$2/u,workdir=$2/w" "$1"
exec systemd-nspawn -q -D "$1" -b --register=no --keep-unit --private-network --machine="$3" systemd.unit=basic.target`
	var console testbin.Log
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", root, up, fmt.Sprintf("ldns-test-%d", os.Getpid()))
	cmd.Stdout, cmd.Stderr = &console, &console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting systemd-nspawn: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n := &node{}
	t.Cleanup(func() {
		if n.pid > 0 {
			syscall.Kill(n.pid, syscall.SIGKILL)
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Logf("systemd-nspawn (pid %d) still running 10 s after its container was killed: killing it", cmd.Process.Pid)
			cmd.Process.Kill()
			<-exited
		}
	})

	// The container's PID 1 is nspawn's child running systemd.
	deadline := time.Now().Add(30 * time.Second)
	for n.pid == 0 {
		select {
		case <-exited:
			t.Fatalf("systemd-nspawn exited: %s", console.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no container PID 1 after 30 s: %s", console.String())
		}
		p := cmd.Process.Pid
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		for _, f := range strings.Fields(string(children)) {
			if comm, _ := os.ReadFile("/proc/" + f + "/comm"); strings.TrimSpace(string(comm)) == "systemd" {
				n.pid, _ = strconv.Atoi(f)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	n.waitFor(t, 60*time.Second, "systemd in the container up", func() (bool, string) {
		s, _ := n.sh("systemctl is-system-running")
		return s == "running" || s == "degraded", s
	})
	t.Logf("container booted in %.1f s (pid 1 = %d)", time.Since(start).Seconds(), n.pid)
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"systemctl status --no-pager localdns.service localdns.socket", "journalctl -u localdns.service -u localdns.socket -n 100 --no-pager", "nft list ruleset", "ip addr", "systemctl --failed --no-pager"} {
				s, _ := n.sh(c)
				t.Logf("# %s\n%s", c, s)
			}
		}
	})
	n.wire(t)
	return n
}

// wire creates the pod and upstream namespaces and their veths to the node.
func (n *node) wire(t *testing.T) {
	id := os.Getpid()
	podNS, upNS := fmt.Sprintf("ldns-pod-%d", id), fmt.Sprintf("ldns-up-%d", id)
	podIf, upIf := fmt.Sprintf("ldp%d", id), fmt.Sprintf("ldu%d", id)
	for _, ns := range []string{podNS, upNS} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	c := strconv.Itoa(n.pid)
	for _, v := range []struct{ ns, ifc, ip, peerIP string }{{podNS, podIf, "10.77.0.2/24", "10.77.0.1/24"}, {upNS, upIf, clusterDNS + "/24", "10.78.0.1/24"}} {
		run(t, "ip", "link", "add", v.ifc, "type", "veth", "peer", "name", v.ifc+"n")
		run(t, "ip", "link", "set", v.ifc, "netns", v.ns)
		run(t, "ip", "link", "set", v.ifc+"n", "netns", c)
		run(t, "ip", "-n", v.ns, "addr", "add", v.ip, "dev", v.ifc)
		run(t, "ip", "-n", v.ns, "link", "set", v.ifc, "up")
		run(t, "ip", "-n", v.ns, "link", "set", "lo", "up")
		run(t, "nsenter", "-t", c, "-n", "ip", "addr", "add", v.peerIP, "dev", v.ifc+"n")
		run(t, "nsenter", "-t", c, "-n", "ip", "link", "set", v.ifc+"n", "up")
	}
	run(t, "ip", "-n", upNS, "addr", "add", vnetDNS+"/24", "dev", upIf)
	run(t, "ip", "-n", podNS, "route", "add", "default", "via", "10.77.0.1")
	// The upstreams reach the pods through the node; nothing else.
	run(t, "ip", "-n", upNS, "route", "add", "10.77.0.0/24", "via", "10.78.0.1")
	// A node routes for its pods, and its default route points at its network.
	run(t, "nsenter", "-t", c, "-n", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "nsenter", "-t", c, "-n", "ip", "route", "add", "default", "via", clusterDNS)
	n.podNS = podNS
	n.pod = enterNS(t, "/run/netns/"+podNS)
	n.up = enterNS(t, "/run/netns/"+upNS)
}

// install follows README.md's "On a node", inside the container.
func (n *node) install(t *testing.T) {
	n.installFiles(t)
	n.must(t, "systemctl enable --now localdns.socket localdns.service")
}

// installFiles is install without the final enable --now.
func (n *node) installFiles(t *testing.T) {
	bin, err := os.ReadFile(localdnsBin)
	if err != nil {
		t.Fatal(err)
	}
	n.put(t, "/root/localdns-install/bin/localdns", bin, 0o644)
	for _, f := range []string{"localdns.service", "localdns.socket", "localdns.slice", "localdns.sysusers"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "systemd", f))
		if err != nil {
			t.Fatal(err)
		}
		n.put(t, "/root/localdns-install/systemd/"+f, b, 0o644)
	}
	n.put(t, "/root/localdns-install/localdns.yaml", []byte(profile), 0o644)
	n.put(t, "/etc/systemd/system/localdns.service.d/test.conf", []byte(testDropIn), 0o644)
	n.must(t, `cd /root/localdns-install &&
install -m 0755 bin/localdns /usr/bin/localdns &&
install -D -m 0644 localdns.yaml /etc/localdns/localdns.yaml &&
cp systemd/localdns.service systemd/localdns.socket systemd/localdns.slice /etc/systemd/system/ &&
systemd-sysusers "$PWD/systemd/localdns.sysusers" &&
systemctl daemon-reload`)
}

// sh runs a shell script inside the container (all its namespaces).
func (n *node) sh(script string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(n.pid), "-a", "sh", "-c", script, "sh"}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (n *node) must(t *testing.T, script string, args ...string) string {
	t.Helper()
	out, err := n.sh(script, args...)
	if err != nil {
		t.Fatalf("in the container: %s: %v\n%s", script, err, out)
	}
	return out
}

// out runs script and returns its output whatever the exit status.
func (n *node) out(t *testing.T, script string, args ...string) string {
	t.Helper()
	out, _ := n.sh(script, args...)
	return out
}

func (n *node) put(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(n.pid), "-a", "sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"`, "sh", path, fmt.Sprintf("%o", mode))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("writing %s in the container: %v\n%s", path, err, out)
	}
}

func (n *node) nrestarts(t *testing.T) int {
	t.Helper()
	v, err := strconv.Atoi(n.must(t, "systemctl show -p NRestarts --value localdns.service"))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (n *node) waitRestarts(t *testing.T, want int, within time.Duration) {
	t.Helper()
	n.waitFor(t, within, fmt.Sprintf("NRestarts >= %d", want), func() (bool, string) {
		s := n.out(t, "systemctl show -p NRestarts --value localdns.service")
		v, _ := strconv.Atoi(s)
		return v >= want, s
	})
}

// waitLocaldns waits until the service is active and localdns itself
// answers the pod on the cluster listener (NSID localdns-pod).
func (n *node) waitLocaldns(t *testing.T, within time.Duration) {
	t.Helper()
	n.waitFor(t, within, "localdns serving the pod", func() (bool, string) {
		if s := n.out(t, "systemctl is-active localdns.service"); s != "active" {
			return false, "localdns.service " + s
		}
		r, err := n.pod.exchange(clusterListener, newQuery("probe.example."), time.Second)
		if err != nil {
			return false, err.Error()
		}
		return nsid(r) == "localdns-pod", fmt.Sprintf("answer without NSID localdns-pod: %v", r)
	})
}

func (n *node) waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; last: %s", what, within, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startUpstream serves DNS on ip:53 in the upstream namespace: every A
// query gets ip.
func (n *node) startUpstream(t *testing.T, ip string) *testdns.Upstream {
	u := testdns.NewUpstream(ip)
	u.Addr = net.JoinHostPort(ip, "53")
	var pc net.PacketConn
	var ln net.Listener
	var err error
	n.up.do(func() {
		if pc, err = net.ListenPacket("udp", u.Addr); err != nil {
			return
		}
		ln, err = net.Listen("tcp", u.Addr)
	})
	if err != nil {
		t.Fatalf("upstream %s: %v", u.Addr, err)
	}
	testdns.ServeConns(t, pc, ln, u)
	return u
}

// nsThread is an OS thread that stays in a network namespace: sockets
// opened on it belong to that namespace and work from any goroutine.
type nsThread struct{ req chan func() }

func enterNS(t *testing.T, path string) *nsThread {
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("opening netns %s: %v", path, err)
	}
	th := &nsThread{req: make(chan func())}
	ready := make(chan error)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// going back to the scheduler in the wrong namespace.
		runtime.LockOSThread()
		if err := netns.Set(h); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for f := range th.req {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("entering netns %s: %v", path, err)
	}
	t.Cleanup(func() { close(th.req); h.Close() })
	return th
}

func (n *nsThread) do(f func()) {
	done := make(chan struct{})
	n.req <- func() { f(); close(done) }
	<-done
}

func newQuery(name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
	return m
}

// exchange sends m over UDP from a new socket (a new source port, as a
// pod's resolver does) and waits up to timeout for the answer.
func (n *nsThread) exchange(server string, m *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	var c net.Conn
	var err error
	n.do(func() { c, err = net.Dial("udp", server) })
	if err != nil {
		return nil, err
	}
	defer c.Close()
	co := &dns.Conn{Conn: c}
	co.SetDeadline(time.Now().Add(timeout))
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if r.Id == m.Id {
			return r, nil
		}
	}
}

func (n *nsThread) query(t *testing.T, server, name string, timeout time.Duration) *dns.Msg {
	t.Helper()
	r, err := n.exchange(server, newQuery(name), timeout)
	if err != nil {
		t.Fatalf("query %s @%s from the pod: %v", name, server, err)
	}
	return r
}

func nsid(r *dns.Msg) string {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if o, ok := o.(*dns.EDNS0_NSID); ok {
				b, _ := hex.DecodeString(o.Nsid)
				return string(b)
			}
		}
	}
	return ""
}

// checkAnswer wants NOERROR with one A record addr and the given NSID
// ("" means no NSID: the fallback's straight answer from the upstream).
func checkAnswer(t *testing.T, r *dns.Msg, addr, wantNSID string) {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("want one answer, have %v", r)
	}
	if a, ok := r.Answer[0].(*dns.A); !ok || a.A.String() != addr {
		t.Errorf("want A %s, have %v", addr, r.Answer[0])
	}
	if got := nsid(r); got != wantNSID {
		t.Errorf("NSID %q, want %q", got, wantNSID)
	}
}

// load sends qps queries a second to the cluster listener, each from a new
// socket, and counts those with no answer within 5 s (glibc's first retry).
type load struct {
	done             chan struct{}
	wg               sync.WaitGroup
	start            time.Time
	mu               sync.Mutex
	lostAt           []time.Duration // when each lost query was sent, since start
	sent, lost, late atomic.Int64
	maxLat           atomic.Int64
}

func startLoad(pod *nsThread, qps int) *load {
	l := &load{done: make(chan struct{}), start: time.Now()}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(qps))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.done:
				return
			case <-tick.C:
			}
			l.sent.Add(1)
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				start := time.Now()
				if _, err := pod.exchange(clusterListener, newQuery(fmt.Sprintf("n%d.load.example.", i%100)), 5*time.Second); err != nil {
					l.lost.Add(1)
					l.mu.Lock()
					l.lostAt = append(l.lostAt, start.Sub(l.start))
					l.mu.Unlock()
					return
				}
				d := time.Since(start)
				if d > time.Second {
					l.late.Add(1)
				}
				for {
					m := l.maxLat.Load()
					if int64(d) <= m || l.maxLat.CompareAndSwap(m, int64(d)) {
						break
					}
				}
			}()
		}
	}()
	return l
}

func (l *load) stop() (sent, lost, late int64, maxLat time.Duration) {
	close(l.done)
	l.wg.Wait()
	return l.sent.Load(), l.lost.Load(), l.late.Load(), time.Duration(l.maxLat.Load())
}

// prober asks the cluster listener every 50 ms (1 s timeout) and records
// when answers arrive; the gap is the longest time without one.
type prober struct {
	done  chan struct{}
	wg    sync.WaitGroup
	start time.Time
	mu    sync.Mutex
	ok    []time.Time
}

func startProber(pod *nsThread) *prober {
	p := &prober{done: make(chan struct{}), start: time.Now()}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.done:
				return
			case <-tick.C:
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				r, err := pod.exchange(clusterListener, newQuery(fmt.Sprintf("p%d.probe.example.", i%20)), time.Second)
				if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 {
					p.mu.Lock()
					p.ok = append(p.ok, time.Now())
					p.mu.Unlock()
				}
			}()
		}
	}()
	return p
}

// stop ends probing and returns the longest interval without an answer,
// from the start to the end of probing.
func (p *prober) stop() time.Duration {
	close(p.done)
	p.wg.Wait()
	end := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	times := append([]time.Time{p.start}, p.ok...)
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	times = append(times, end)
	var gap time.Duration
	for i := 1; i < len(times); i++ {
		gap = max(gap, times[i].Sub(times[i-1]))
	}
	return gap
}

func (p *prober) answered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ok)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
