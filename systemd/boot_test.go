package systemd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnderSystemd boots a real systemd (this machine's /lib/systemd/systemd)
// as PID 1 of fresh PID, mount, network, UTS, IPC and cgroup namespaces, with
// the three units exactly as shipped, and runs localdns under them:
//
//   - the sockets are bound by systemd and shared with the daemon;
//   - Type=notify: the unit turns active only on READY=1, with STATUS=;
//   - the daemon runs as the sysusers-created user with exactly CAP_NET_ADMIN
//     and CAP_NET_BIND_SERVICE, no new privileges and a seccomp filter;
//   - the watchdog is fed (a test drop-in sets WatchdogSec=5, a ping a second);
//   - after SIGKILL a query sent in the gap is queued by the socket and
//     answered by the restarted daemon, the listener addresses and rules stay;
//   - reload works; stopping both units removes the addresses and hands the
//     listeners to the fallback, and the cache snapshot is left in the
//     StateDirectory;
//   - in a crash loop (a test drop-in makes every start fail) the service
//     gives up at its start limit, the socket fails with it, and the socket's
//     teardown removes the addresses and leaves the fallback; teardown
//     --purge removes that too.
//
// Isolation: inside the namespaces the root file system is read-only, /run,
// /tmp, /var/{tmp,log,lib,cache} are private tmpfs, /etc is a copy, /proc/sys
// and /sys are read-only, and systemd's unit path holds only our units and
// empty stand-ins for the targets they order against (SYSTEMD_UNIT_PATH), so
// no boot-time unit of the host runs. The one shared resource is a cgroup
// subtree, removed afterwards. systemd's own log goes nowhere (never to the
// host's console or kernel log); on failure the test prints `systemctl
// status` and the daemon's output instead. DNS goes only to the daemon under test, inside
// the test's network namespace; its upstreams are unused loopback addresses.
func TestUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots systemd in namespaces; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, mounts, cgroups)")
	}
	for _, tool := range []string{"/lib/systemd/systemd", "unshare", "nsenter", "dig", "nft", "ip", "ss", "systemd-sysusers"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	bin := localdnsBinary(t)
	root := t.TempDir()
	sb := newSandbox(t, root, bin)
	sb.boot(t)

	// Start-up: READY=1 turns the unit active; STATUS= is shown.
	sb.waitActive(t, 20*time.Second)
	if status := sb.show(t, "localdns.service", "StatusText"); !strings.HasPrefix(status, "serving ") {
		t.Errorf("StatusText = %q, want the daemon's READY status", status)
	}

	// Identity and privileges of the main process.
	pid := sb.show(t, "localdns.service", "MainPID")
	st := sb.run(t, "cat", "/proc/"+pid+"/status")
	for _, want := range []string{
		"Uid:\t" + sb.uid + "\t" + sb.uid + "\t" + sb.uid + "\t" + sb.uid,
		"CapEff:\t0000000000001400", // CAP_NET_ADMIN (12) | CAP_NET_BIND_SERVICE (10)
		"CapBnd:\t0000000000001400",
		"NoNewPrivs:\t1",
		"Seccomp:\t2",
	} {
		if !strings.Contains(st, want+"\n") {
			t.Errorf("main process: %q not in /proc/%s/status:\n%s", want, pid, st)
		}
	}

	// Socket activation: every listener socket is systemd's and the daemon's.
	ss := sb.run(t, "ss", "-Htulnp", "sport = :53")
	for _, l := range []string{"169.254.10.10:53", "169.254.10.11:53"} {
		for _, proto := range []string{"udp", "tcp"} {
			line := grepLine(ss, proto, l)
			if !strings.Contains(line, `"systemd",pid=1,`) || !strings.Contains(line, `"localdns",pid=`+pid+",") {
				t.Errorf("%s %s not shared by systemd and localdns: %q", proto, l, line)
			}
		}
	}

	// ReceiveBuffer=8M: the kernel doubles it, for bookkeeping overhead.
	if mem := sb.run(t, "ss", "-Hulnm", "sport = :53"); strings.Count(mem, "rb16777216") != 2 {
		t.Errorf("UDP listener receive buffers, want rb16777216 on both:\n%s", mem)
	}

	// Watchdog: WATCHDOG=1 about every second.
	var stamps []string
	for i := 0; i < 4; i++ {
		stamps = append(stamps, sb.show(t, "localdns.service", "WatchdogTimestampMonotonic"))
		time.Sleep(900 * time.Millisecond)
	}
	changes := 0
	for i := 1; i < len(stamps); i++ {
		if stamps[i] != stamps[i-1] {
			changes++
		}
	}
	if changes < 2 {
		t.Errorf("watchdog timestamps %v: want pings about every second", stamps)
	}

	for _, l := range []string{"169.254.10.10", "169.254.10.11"} {
		for _, tcp := range []bool{false, true} {
			sb.dig(t, l, tcp, 3)
		}
	}

	// Crash: SIGKILL, then a query in the gap. The socket queues it, the
	// restarted daemon answers it; nothing was torn down.
	sb.run(t, "kill", "-KILL", pid)
	start := time.Now()
	sb.dig(t, "169.254.10.11", false, 8)
	gap := time.Since(start)
	t.Logf("query sent right after SIGKILL answered after %v (RestartSec=1 + start-up)", gap.Round(time.Millisecond))
	if n := sb.show(t, "localdns.service", "NRestarts"); n != "1" {
		t.Errorf("NRestarts = %s, want 1", n)
	}
	if p2 := sb.show(t, "localdns.service", "MainPID"); p2 == pid || p2 == "0" {
		t.Errorf("MainPID after SIGKILL = %s (was %s)", p2, pid)
	}
	if addrs := sb.run(t, "ip", "-4", "addr", "show", "dev", "lo"); strings.Count(addrs, "169.254.10.1") != 2 {
		t.Errorf("listener addresses gone after a restart:\n%s", addrs)
	}
	if tables := sb.run(t, "nft", "list", "tables"); !strings.Contains(tables, "table inet localdns") {
		t.Errorf("conntrack-bypass table gone after a restart: %q", tables)
	}

	// Reload.
	sb.run(t, "systemctl", "reload", "localdns.service")
	if s := sb.show(t, "localdns.service", "ActiveState"); s != "active" {
		t.Errorf("after reload: %s", s)
	}
	sb.dig(t, "169.254.10.10", false, 3)

	// Stop both: the socket's teardown removes the addresses and leaves the
	// fallback in charge of the listeners.
	sb.run(t, "systemctl", "stop", "localdns.socket", "localdns.service")
	for _, u := range []string{"localdns.service", "localdns.socket"} {
		if s, r := sb.show(t, u, "ActiveState"), sb.show(t, u, "Result"); s != "inactive" || r != "success" {
			t.Errorf("%s after stop: %s/%s, want inactive/success", u, s, r)
		}
	}
	if addrs := sb.run(t, "ip", "-4", "addr", "show", "dev", "lo"); strings.Contains(addrs, "169.254.10.1") {
		t.Errorf("listener addresses left after stop:\n%s", addrs)
	}
	if tables := sb.run(t, "nft", "list", "tables"); !strings.Contains(tables, "table inet localdns-fallback") || strings.Contains(tables, "table inet localdns\n") {
		t.Errorf("after stop: want the fallback table and no conntrack-bypass table: %q", tables)
	}
	if snap := sb.run(t, "stat", "-c", "%U %a", "/var/lib/localdns/cache.snapshot"); strings.TrimSpace(snap) != "localdns 600" {
		t.Errorf("cache snapshot: %q, want owner localdns, mode 600", snap)
	}

	// Crash loop: start again, then make every start fail (a test drop-in
	// adds ExecStartPre=/bin/false, and RestartSec=200ms to get there
	// sooner) and kill the daemon. After
	// StartLimitBurst starts the service gives up, the socket fails with it,
	// and the socket's teardown removes addresses and rules.
	sb.run(t, "systemctl", "start", "localdns.socket", "localdns.service")
	sb.waitActive(t, 20*time.Second)
	write(t, filepath.Join(sb.root, "units/localdns.service.d/zz-fail.conf"), "[Service]\nExecStartPre=/bin/false\nRestartSec=200ms\n")
	sb.run(t, "systemctl", "daemon-reload")
	sb.run(t, "kill", "-KILL", sb.show(t, "localdns.service", "MainPID"))
	start = time.Now()
	for sb.show(t, "localdns.socket", "ActiveState") != "failed" {
		if time.Since(start) > 40*time.Second {
			t.Fatalf("no start limit after 40 s: service %s/%s", sb.show(t, "localdns.service", "ActiveState"), sb.show(t, "localdns.service", "Result"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("crash loop: gave up after %v", time.Since(start).Round(100*time.Millisecond))
	if r := sb.show(t, "localdns.socket", "Result"); r != "service-start-limit-hit" {
		t.Errorf("socket Result = %s, want service-start-limit-hit", r)
	}
	if s := sb.show(t, "localdns.service", "ActiveState"); s != "failed" {
		t.Errorf("service after the start limit: %s, want failed", s)
	}
	if addrs := sb.run(t, "ip", "-4", "addr", "show", "dev", "lo"); strings.Contains(addrs, "169.254.10.1") {
		t.Errorf("listener addresses left after the start limit:\n%s", addrs)
	}
	if tables := sb.run(t, "nft", "list", "tables"); !strings.Contains(tables, "table inet localdns-fallback") || strings.Contains(tables, "table inet localdns\n") {
		t.Errorf("after the start limit: want the fallback table and no conntrack-bypass table: %q", tables)
	}
	// An uninstall removes the fallback too.
	sb.run(t, "localdns", "teardown", "--purge", "--config", "/etc/localdns/localdns.yaml")
	if tables := sb.run(t, "nft", "list", "tables"); strings.Contains(tables, "localdns") {
		t.Errorf("after teardown --purge: %q", tables)
	}
}

// sandbox is the booted systemd and what the test needs to talk to it.
type sandbox struct {
	root   string
	cgroup string // name of our subtree in the cgroup2 hierarchy
	uid    string // of the localdns user in the copied /etc
	cmd    *exec.Cmd
	out    *bytes.Buffer
	pid1   int
}

func newSandbox(t *testing.T, root, bin string) *sandbox {
	t.Helper()
	sb := &sandbox{root: root, cgroup: "localdns-units-test-" + strconv.Itoa(os.Getpid())}
	for _, d := range []string{"bin", "units/localdns.service.d", "cg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "cp", "-a", "/etc", filepath.Join(root, "etc"))
	mustRun(t, "cp", bin, filepath.Join(root, "bin", "localdns"))
	mustRun(t, "systemd-sysusers", "--root="+root, mustAbs(t, "localdns.sysusers"))
	sb.uid = strings.TrimSpace(mustRun(t, "awk", "-F:", `$1=="localdns"{print $3}`, filepath.Join(root, "etc/passwd")))
	if sb.uid == "" {
		t.Fatal("systemd-sysusers did not create user localdns")
	}

	// The units, byte for byte, and a test drop-in.
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(root, "units", u), string(b))
	}
	write(t, filepath.Join(root, "units/localdns.service.d/test.conf"), `[Service]
# Test only: ping every second instead of every 6 s, and keep the log.
WatchdogSec=5
StandardOutput=append:/run/test/localdns.log
StandardError=inherit
`)
	for _, target := range []string{"sysinit", "basic", "sockets", "shutdown", "slices", "network", "network-online", "multi-user"} {
		write(t, filepath.Join(root, "units", target+".target"), "[Unit]\nDescription=stand-in for "+target+".target\nDefaultDependencies=no\n")
	}
	write(t, filepath.Join(root, "units/system.slice"), "[Unit]\nDescription=stand-in\nDefaultDependencies=no\n")
	write(t, filepath.Join(root, "units/test.target"), "[Unit]\nDescription=localdns units test\nWants=localdns.socket localdns.service\n")

	// A profile whose upstreams are documentation addresses nothing routes
	// to in the test's network namespace (it has only lo): no query leaves
	// it. Not loopback: the fallback skips upstreams only the host reaches.
	write(t, filepath.Join(root, "etc/localdns/localdns.yaml"), `mode: Required
listeners:
  node: 169.254.10.10
  cluster: 169.254.10.11
clusterDNS: [192.0.2.77]
vnetDNS: [192.0.2.78]
network:
  manage: true
metrics: 127.0.0.1:9253
vnetDNSOverrides:
  ".": {forwardDestination: VnetDNS}
  cluster.local: {forwardDestination: ClusterCoreDNS}
kubeDNSOverrides:
  ".": {forwardDestination: ClusterCoreDNS}
  cluster.local: {forwardDestination: ClusterCoreDNS}
`)
	gid := strings.TrimSpace(mustRun(t, "awk", "-F:", `$1=="localdns"{print $3}`, filepath.Join(root, "etc/group")))
	mustRun(t, "chown", "root:"+gid, filepath.Join(root, "etc/localdns/localdns.yaml"))
	mustRun(t, "chmod", "0640", filepath.Join(root, "etc/localdns/localdns.yaml"))

	// Stage 1 (PID 1 of the new namespaces): move into a cgroup subtree of
	// our own and enter a cgroup namespace rooted there.
	write(t, filepath.Join(root, "stage1.sh"), fmt.Sprintf(`#!/bin/sh
set -e
mount --make-rprivate /
mount -t cgroup2 cgroup2 %[1]s/cg
mkdir -p %[1]s/cg/%[2]s
echo $$ > %[1]s/cg/%[2]s/cgroup.procs
umount %[1]s/cg
exec unshare --cgroup %[1]s/stage2.sh
`, root, sb.cgroup))
	// Stage 2: private mounts, read-only everything else, then systemd.
	write(t, filepath.Join(root, "stage2.sh"), fmt.Sprintf(`#!/bin/sh
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/test/units
mount --bind %[1]s/units /run/test/units
mount --bind %[1]s/etc /etc
# The units run /usr/bin/localdns: a read-only overlay puts the test's binary
# on top of the real /usr/bin, which stays visible and is not written to.
mount -t overlay overlay -o ro,lowerdir=%[1]s/bin:/usr/bin /usr/bin
for d in /tmp /var/tmp /var/log /var/lib /var/cache; do mount -t tmpfs tmpfs $d; done
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup
mount -o remount,bind,ro /sys 2>/dev/null || { mount --bind /sys /sys; mount -o remount,bind,ro /sys; }
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -o remount,bind,ro /
ip link set lo up
export container=localdns-test SYSTEMD_UNIT_PATH=/run/test/units
exec /lib/systemd/systemd --system --unit=test.target --log-target=null
`, root))
	for _, s := range []string{"stage1.sh", "stage2.sh"} {
		if err := os.Chmod(filepath.Join(root, s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return sb
}

func (sb *sandbox) boot(t *testing.T) {
	t.Helper()
	sb.out = new(bytes.Buffer)
	sb.cmd = exec.Command("unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "--kill-child", "--mount-proc",
		filepath.Join(sb.root, "stage1.sh"))
	sb.cmd.Stdout, sb.cmd.Stderr = sb.out, sb.out
	sb.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sb.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.shutdown(t) })

	deadline := time.Now().Add(10 * time.Second)
	for sb.pid1 == 0 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", sb.cmd.Process.Pid, sb.cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			sb.pid1, _ = strconv.Atoi(f[0])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PID 1 in the new namespaces:\n%s", sb.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shutdown kills the namespace's PID 1 (which takes every process in it) and
// removes the cgroup subtree it used.
func (sb *sandbox) shutdown(t *testing.T) {
	if t.Failed() && sb.pid1 != 0 {
		log, _ := sb.nsenter("cat", "/run/test/localdns.log")
		status, _ := sb.nsenter("systemctl", "status", "--no-pager", "localdns.service", "localdns.socket")
		t.Logf("unshare output:\n%s\nunits:\n%s\nlocaldns log:\n%s", sb.out, status, log)
	}
	if sb.pid1 != 0 {
		syscall.Kill(sb.pid1, syscall.SIGKILL)
	}
	sb.cmd.Process.Kill()
	sb.cmd.Wait()
	// Remove our cgroup subtree, deepest first, from a private mount
	// namespace so the host's mount table is untouched.
	script := fmt.Sprintf(`mount -t cgroup2 cgroup2 %[1]s/cg && for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -d %[1]s/cg/%[2]s ] || break
  find %[1]s/cg/%[2]s -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.2
done; [ ! -d %[1]s/cg/%[2]s ]`, sb.root, sb.cgroup)
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("removing cgroup %s: %v\n%s", sb.cgroup, err, out)
	}
}

func (sb *sandbox) nsenter(args ...string) (string, error) {
	full := append([]string{"-t", strconv.Itoa(sb.pid1), "-m", "-p", "-n", "-C", "--"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

func (sb *sandbox) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := sb.nsenter(args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (sb *sandbox) show(t *testing.T, unit, prop string) string {
	t.Helper()
	return strings.TrimSpace(sb.run(t, "systemctl", "show", "-p", prop, "--value", unit))
}

func (sb *sandbox) waitActive(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out, _ := sb.nsenter("systemctl", "is-active", "localdns.service")
		state := strings.TrimSpace(out)
		if state == "active" {
			return
		}
		if state == "failed" || time.Now().After(deadline) {
			status, _ := sb.nsenter("systemctl", "status", "--no-pager", "localdns.service", "localdns.socket")
			t.Fatalf("localdns.service %s:\n%s", state, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dig asks server for the health-check name (answered locally by whoami)
// with a single try and expects NOERROR.
func (sb *sandbox) dig(t *testing.T, server string, tcp bool, timeout int) {
	t.Helper()
	args := []string{"dig", "+tries=1", "+time=" + strconv.Itoa(timeout), "@" + server, "health-check.localdns.local", "A"}
	if tcp {
		args = append(args, "+tcp")
	}
	out := sb.run(t, args...)
	if !strings.Contains(out, "status: NOERROR") {
		t.Errorf("%s: no NOERROR:\n%s", strings.Join(args, " "), out)
	}
}

func grepLine(text string, fields ...string) string {
	for _, line := range strings.Split(text, "\n") {
		ok := true
		for _, f := range fields {
			if !strings.Contains(line, f) {
				ok = false
				break
			}
		}
		if ok {
			return line
		}
	}
	return ""
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
