package systemd

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPackageUnderNspawn installs the Debian package that `make package`
// builds on the booted node, the way an operator does: the profile first,
// then dpkg -i --force-confold; upgrades it under 5000 QPS from the pod,
// removes it and purges it. See README.md.
func TestPackageUnderNspawn(t *testing.T) {
	if r := skipReason(); r != "" {
		t.Skip(r)
	}
	if testing.Short() {
		t.Skip("builds two packages and boots a container; skipped with -short")
	}
	for _, tool := range []string{"make", "dpkg-deb", "dnsperf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian: make, dpkg, dnsperf)", tool)
		}
	}
	if _, err := os.Stat("/usr/bin/dpkg"); err != nil {
		t.Skip("no dpkg in this machine's root, which the container boots")
	}
	const oldVersion, newVersion = "1.0.0", "1.0.1"
	debs := map[string][]byte{}
	if !t.Run("build", func(t *testing.T) {
		dist := t.TempDir()
		for _, v := range []string{oldVersion, newVersion} {
			start := time.Now()
			cmd := exec.Command("make", "-C", "../..", "package", "VERSION="+v, "PACKAGE_ARCHS="+runtime.GOARCH, "DIST="+dist)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("make package VERSION=%s: %v\n%s", v, err, out)
			}
			b, err := os.ReadFile(filepath.Join(dist, debName(v)))
			if err != nil {
				t.Fatal(err)
			}
			debs[v] = b
			t.Logf("make package VERSION=%s: %s, %.1f MB in %.1f s", v, debName(v), float64(len(b))/1e6, time.Since(start).Seconds())
		}
	}) {
		return
	}

	n := bootNode(t)
	clusterUp := n.startUpstream(t, clusterDNS)
	n.startUpstream(t, vnetDNS)
	for v, b := range debs {
		n.put(t, "/root/"+debName(v), b, 0o644)
	}
	if r, err := n.pod.exchange(clusterListener, newQuery("before.example."), time.Second); err == nil {
		t.Fatalf("the pod gets an answer before the install: %v", r)
	}

	// An operator's typo in the profile, written before the install:
	// postinst enables the units, starts nothing and says what to edit.
	if !t.Run("install with a broken profile", func(t *testing.T) {
		n.put(t, profilePath, []byte(profile+"port: 70000\n"), 0o644)
		out := n.must(t, "dpkg -i --force-confold /root/"+debName(oldVersion)+" 2>&1")
		t.Logf("dpkg -i with a broken profile:\n%s", out)
		for _, want := range []string{"localdns is not (re)started", "port", "edit " + profilePath} {
			if !strings.Contains(out, want) {
				t.Errorf("dpkg -i output does not say %q", want)
			}
		}
		if s := n.out(t, "systemctl is-enabled localdns.socket localdns.service"); s != "enabled\nenabled" {
			t.Errorf("units not enabled: %q", s)
		}
		if s := n.out(t, "systemctl is-active localdns.socket localdns.service"); s != "inactive\ninactive" {
			t.Errorf("units started on a broken profile: %q", s)
		}
		if r, err := n.pod.exchange(clusterListener, newQuery("broken.example."), time.Second); err == nil {
			t.Errorf("the pod gets an answer though nothing was started: %v", r)
		}
		// Start over from a clean node.
		n.must(t, "dpkg -P localdns")
		if s := n.out(t, "ls -d /etc/localdns /var/lib/localdns /run/localdns 2>/dev/null; nft list ruleset | grep localdns"); s != "" {
			t.Errorf("left after purging a never-started install:\n%s", s)
		}
	}) {
		return
	}

	if !t.Run("install", func(t *testing.T) {
		n.put(t, profilePath, []byte(profile), 0o644)
		start := time.Now()
		out := n.must(t, "dpkg -i --force-confold /root/"+debName(oldVersion)+" 2>&1")
		n.waitLocaldns(t, 30*time.Second)
		t.Logf("dpkg -i --force-confold to serving: %.1f s\n%s", time.Since(start).Seconds(), out)
		if got := n.must(t, "cat "+profilePath); got+"\n" != profile {
			t.Errorf("dpkg replaced the operator's profile with:\n%s", got)
		}
		if s := n.out(t, "systemctl is-enabled localdns.socket localdns.service"); s != "enabled\nenabled" {
			t.Errorf("units not enabled: %q", s)
		}
		checkVersion(t, n, oldVersion)
		name := "kubernetes.default.svc.cluster.local."
		checkAnswer(t, n.pod.query(t, clusterListener, name, time.Second), clusterDNS, "localdns-pod")
		before := clusterUp.Count(name)
		checkAnswer(t, n.pod.query(t, clusterListener, name, time.Second), clusterDNS, "localdns-pod")
		if after := clusterUp.Count(name); after != before {
			t.Errorf("second query reached the cluster DNS (%d -> %d queries): not a cache hit", before, after)
		}
		checkAnswer(t, n.pod.query(t, nodeListener, "example.com.", time.Second), vnetDNS, "localdns")
	}) {
		return
	}

	if !t.Run("upgrade under 5000 QPS", func(t *testing.T) {
		// Cached before the upgrade: answered after it from the snapshot.
		cached := "cached.before.upgrade.example."
		checkAnswer(t, n.pod.query(t, clusterListener, cached, time.Second), clusterDNS, "localdns-pod")
		cachedAsked := clusterUp.Count(cached)
		pid := n.must(t, "systemctl show -p MainPID --value localdns.service")
		socketID := n.must(t, "systemctl show -p InvocationID --value localdns.socket")

		names := filepath.Join(t.TempDir(), "names")
		var b strings.Builder
		for i := range 500 {
			fmt.Fprintf(&b, "u%d.dnsperf.example. A\n", i)
		}
		if err := os.WriteFile(names, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		podSNMP := func() string {
			b, _ := exec.Command("ip", "netns", "exec", n.podNS, "cat", "/proc/net/snmp").Output()
			return string(b)
		}
		podUDP0, nodeUDP0 := udpCounters(podSNMP()), udpCounters(n.out(t, "cat /proc/net/snmp"))
		const seconds = 12
		// -q: enough outstanding queries to keep sending 5000 a second
		// through the restart gap instead of waiting for answers. -b 4096
		// (KiB): the new process answers the queries queued meanwhile in a
		// burst, and dnsperf reads them all on one socket; with the default
		// 208 KiB the pod's kernel dropped hundreds of those answers
		// (RcvbufErrors). Pods' resolvers use a socket per query.
		perf := exec.Command("ip", "netns", "exec", n.podNS, "dnsperf", "-s", "169.254.10.11", "-Q", "5000", "-q", "20000", "-b", "4096",
			"-t", "5", "-l", strconv.Itoa(seconds), "-d", names, "-v")
		var perfOut strings.Builder
		perf.Stdout, perf.Stderr = &perfOut, &perfOut
		if err := perf.Start(); err != nil {
			t.Fatalf("dnsperf: %v", err)
		}
		perfStart := time.Now()
		perfDone := make(chan error, 1)
		go func() { perfDone <- perf.Wait() }()
		t.Cleanup(func() {
			if perf.ProcessState == nil {
				perf.Process.Kill()
				<-perfDone
			}
		})
		n.waitFor(t, 10*time.Second, "dnsperf's queries reaching the cluster DNS", func() (bool, string) {
			c := clusterUp.Count("u499.dnsperf.example.")
			return c > 0, fmt.Sprintf("u499 asked %d times", c)
		})
		time.Sleep(time.Second) // load on the old version, too

		upStart := time.Since(perfStart)
		out := n.must(t, "dpkg -i --force-confold /root/"+debName(newVersion)+" 2>&1")
		dpkgTook := time.Since(perfStart) - upStart
		n.waitLocaldns(t, 30*time.Second)
		upEnd := time.Since(perfStart)
		t.Logf("dpkg -i %s: %.1f s, serving again %.1f s after it began (at %.1f s of dnsperf's %d s)\n%s",
			newVersion, dpkgTook.Seconds(), (upEnd - upStart).Seconds(), upStart.Seconds(), seconds, out)
		if upEnd > (seconds-1)*time.Second {
			t.Errorf("the upgrade ended at %.1f s, too late for dnsperf's %d s of load to cover it", upEnd.Seconds(), seconds)
		}
		if err := <-perfDone; err != nil {
			t.Fatalf("dnsperf: %v\n%s", err, perfOut.String())
		}
		sent, lost := dnsperfFigure(perfOut.String(), "Queries sent"), dnsperfFigure(perfOut.String(), "Queries lost")
		if sent < 0 || lost < 0 {
			t.Fatalf("no Queries sent/lost in dnsperf's output:\n%s", perfOut.String())
		}
		t.Logf("dnsperf at 5000 QPS for %d s across the upgrade:\n%s", seconds, dnsperfSummary(perfOut.String()))
		// Where a loss happened: the pod's counters are dnsperf's socket,
		// the node's are the listeners' (the socket unit's queue).
		podUDP, nodeUDP := udpCounters(podSNMP()), udpCounters(n.out(t, "cat /proc/net/snmp"))
		var errs []string
		for _, k := range []string{"RcvbufErrors", "SndbufErrors", "NoPorts", "InErrors"} {
			errs = append(errs, fmt.Sprintf("%s pod %d node %d", k, podUDP[k]-podUDP0[k], nodeUDP[k]-nodeUDP0[k]))
		}
		t.Logf("UDP errors during the run: %s", strings.Join(errs, ", "))
		if lost != 0 {
			t.Errorf("%d of %d queries lost across the upgrade (dpkg -i from %.1f s to %.1f s); %s",
				lost, sent, upStart.Seconds(), upEnd.Seconds(), dnsperfTimeouts(perfOut.String()))
		}
		if sent < 5000*(seconds-2) {
			t.Errorf("dnsperf sent only %d queries in %d s: not the 5000 QPS asked for", sent, seconds)
		}

		checkVersion(t, n, newVersion)
		if now := n.must(t, "systemctl show -p MainPID --value localdns.service"); now == pid || now == "0" {
			t.Errorf("localdns.service MainPID %s -> %s: not restarted on the new binary", pid, now)
		}
		if now := n.must(t, "systemctl show -p InvocationID --value localdns.socket"); now != socketID {
			t.Errorf("localdns.socket was restarted by the upgrade (invocation %s -> %s): its queued queries are gone", socketID, now)
		}
		var st struct {
			Cache struct {
				SnapshotRestored float64 `json:"snapshotRestoredEntries"`
			} `json:"cache"`
		}
		js := n.must(t, "localdns status --json --config "+profilePath+" 2>/dev/null")
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatalf("localdns status --json: %v\n%s", err, js)
		}
		t.Logf("cache entries restored from the snapshot at the new version's start: %.0f", st.Cache.SnapshotRestored)
		if st.Cache.SnapshotRestored <= 0 {
			t.Errorf("no cache entries restored from the snapshot after the upgrade:\n%s", js)
		}
		checkAnswer(t, n.pod.query(t, clusterListener, cached, time.Second), clusterDNS, "localdns-pod")
		if now := clusterUp.Count(cached); now != cachedAsked {
			t.Errorf("%s, cached before the upgrade, was asked of the cluster DNS again after it (%d -> %d)", cached, cachedAsked, now)
		}
	}) {
		return
	}

	if !t.Run("remove", func(t *testing.T) {
		p := startProber(n.pod)
		out := n.must(t, "dpkg -r localdns 2>&1")
		checkAnswer(t, n.pod.query(t, clusterListener, "removed.example.", time.Second), clusterDNS, "")
		gap := p.stop()
		t.Logf("dpkg -r: prober gap %.2f s (%d probes answered)\n%s", gap.Seconds(), p.answered(), out)
		if gap > 2*time.Second {
			t.Errorf("pod DNS gap %.2f s at the removal, want at most 2 s", gap.Seconds())
		}
		if s := n.out(t, "systemctl is-active localdns.socket localdns.service"); s != "inactive\ninactive" {
			t.Errorf("units still active after dpkg -r: %q", s)
		}
		if s := n.out(t, "ls /usr/bin/localdns /usr/lib/systemd/system/localdns.* 2>/dev/null"); s != "" {
			t.Errorf("files left after dpkg -r:\n%s", s)
		}
		// As documented: the fallback stays (pods that still have the
		// listener in their resolv.conf keep resolving), the profile too
		// (a conffile); the listener addresses and the link are gone.
		if s := n.out(t, "nft list tables"); s != "table inet localdns-fallback" {
			t.Errorf("want only the fallback table after dpkg -r, have:\n%s", s)
		}
		if s := n.out(t, "ip -o addr"); strings.Contains(s, "169.254.10.") {
			t.Errorf("a listener address is left after dpkg -r:\n%s", s)
		}
		if n.out(t, "cat "+profilePath)+"\n" != profile {
			t.Errorf("dpkg -r did not keep the profile")
		}
	}) {
		return
	}

	t.Run("purge", func(t *testing.T) {
		out := n.must(t, "dpkg -P localdns 2>&1")
		t.Logf("dpkg -P:\n%s", out)
		if s := n.out(t, "dpkg-query -W -f '${db:Status-Status}' localdns"); s != "not-installed" && !strings.Contains(s, "no packages found") {
			t.Errorf("dpkg still knows localdns after the purge: %q", s)
		}
		if s := n.out(t, "find /etc/systemd /usr/lib/systemd /lib/systemd /run/systemd -name '*localdns*'"); s != "" {
			t.Errorf("unit files or drop-ins of ours left after the purge:\n%s", s)
		}
		if s := n.out(t, "ls -d /etc/localdns /var/lib/localdns /run/localdns /usr/share/localdns /usr/share/doc/localdns 2>/dev/null"); s != "" {
			t.Errorf("directories left after the purge:\n%s", s)
		}
		if s := n.out(t, "nft list ruleset"); strings.Contains(s, "localdns") {
			t.Errorf("nftables still has localdns after the purge:\n%s", s)
		}
		if s := n.out(t, "ip -o addr; ip -o link"); strings.Contains(s, "169.254.10.") || strings.Contains(s, "localdns") {
			t.Errorf("a listener address or link is left after the purge:\n%s", s)
		}
		if r, err := n.pod.exchange(clusterListener, newQuery("purged.example."), time.Second); err == nil {
			t.Errorf("the pod still gets an answer after the purge: %v", r)
		} else {
			t.Logf("after the purge the pod's query fails as before the install: %v", err)
		}
		// Debian keeps system users (documented in deploy/package/README.md).
		t.Logf("the localdns user after the purge: %s", n.out(t, "getent passwd localdns || echo none"))
	})
}

func debName(version string) string {
	return fmt.Sprintf("localdns_%s_%s.deb", version, runtime.GOARCH)
}

// checkVersion wants `localdns version` on the node to report version.
func checkVersion(t *testing.T, n *node, version string) {
	t.Helper()
	if s := n.must(t, "localdns version"); !strings.HasPrefix(s, "localdns "+version+"\n") {
		t.Errorf("localdns version says %q, want %s", s, version)
	}
}

// dnsperfFigure returns the count on dnsperf's "<what>: N" line, -1 if none.
func dnsperfFigure(out, what string) int {
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(what) + `:\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// dnsperfSummary keeps the statistics lines of dnsperf's output.
func dnsperfSummary(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		for _, k := range []string{"Queries sent", "Queries completed", "Queries lost", "Queries interrupted", "Response codes", "Queries per second", "Average Latency", "Latency StdDev"} {
			if strings.Contains(l, k) {
				keep = append(keep, strings.TrimSpace(l))
			}
		}
	}
	return strings.Join(keep, "\n")
}

// udpCounters parses the Udp: lines of /proc/net/snmp.
func udpCounters(snmp string) map[string]int {
	var head []string
	c := map[string]int{}
	for _, l := range strings.Split(snmp, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i := 1; i < len(f) && i < len(head); i++ {
			c[head[i]], _ = strconv.Atoi(f[i])
		}
	}
	return c
}

// dnsperfTimeouts says where in dnsperf -v's stream of results ("> RCODE
// name type latency", "> T name type" for a timeout) the timeouts came: the
// count of results before each, over 5000 a second, is about when it was
// sent.
func dnsperfTimeouts(out string) string {
	var at []string
	k := 0
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "> ") {
			continue
		}
		if strings.HasPrefix(l, "> T ") && len(at) < 20 {
			at = append(at, fmt.Sprintf("%.2f", float64(k)/5000))
		}
		k++
	}
	return fmt.Sprintf("timeouts among the results at about %s s (the first 20)", strings.Join(at, ", "))
}
