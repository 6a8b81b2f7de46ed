package node

import (
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/testnotify"
)

// intervals summarises the gaps between consecutive pings.
func intervals(ns []testnotify.Notification) (lo, avg, hi time.Duration) {
	var at []time.Time
	for _, n := range ns {
		if n.Has("WATCHDOG=1") {
			at = append(at, n.At)
		}
	}
	if len(at) < 2 {
		return 0, 0, 0
	}
	lo = time.Hour
	for i := 1; i < len(at); i++ {
		g := at[i].Sub(at[i-1])
		lo, hi = min(lo, g), max(hi, g)
	}
	return lo, at[len(at)-1].Sub(at[0]) / time.Duration(len(at)-1), hi
}

// TestNotifyReadinessAndWatchdog runs the binary with a NOTIFY_SOCKET the
// test reads and WATCHDOG_USEC=2s (a ping every 400 ms, probe timeout 200
// ms; with 1 s the 100 ms probe timeout is missed on this shared 2-core
// machine by scheduling delay alone): READY=1 comes once
// the listeners answer, WATCHDOG=1 only while the self-probe passes (not
// while an nftables rule drops the cluster listener's DNS, again once it is
// gone, and still with every upstream down), and STOPPING=1 last on SIGTERM.
func TestNotifyReadinessAndWatchdog(t *testing.T) {
	const (
		watchdog = 2 * time.Second
		interval = watchdog / 5
		window   = 2 * time.Second
		expect   = int(window / interval)
	)
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	cfg := newProfile(t, up).write(t)
	sock := testnotify.Listen(t)

	d := startRun(t, node, cfg, runOpts{env: []string{"NOTIFY_SOCKET=" + sock.Path, "WATCHDOG_USEC=" + strconv.FormatInt(watchdog.Microseconds(), 10)}})
	started := time.Now()
	ready, before, ok := sock.Next("READY=1", 15*time.Second)
	if !ok {
		t.Fatalf("no READY=1 within 15s (got %v); log:\n%s", before, d.Log())
	}
	// The moment READY=1 arrives, both listeners answer and the bypass is in.
	for _, l := range []string{nodeListener, clusterListener} {
		for _, network := range []string{"udp", "tcp"} {
			if !answered(t, node, network, l+":53", time.Second) {
				t.Errorf("READY=1 sent, but %s/%s does not answer", l, network)
			}
		}
	}
	if !hasTable(t, node) {
		t.Errorf("READY=1 sent before the conntrack bypass table was installed")
	}
	if n := testnotify.Count(before, "WATCHDOG=1"); n != 0 {
		t.Errorf("%d WATCHDOG=1 before READY=1", n)
	}
	t.Logf("READY=1 %s after start: %q", ready.At.Sub(started).Round(time.Millisecond), ready.Lines)

	healthy := sock.Collect(window)
	lo, avg, hi := intervals(healthy)
	t.Logf("healthy: %d WATCHDOG=1 in %s, interval min %s avg %s max %s (WATCHDOG_USEC %s)", testnotify.Count(healthy, "WATCHDOG=1"), window, lo.Round(time.Millisecond), avg.Round(time.Millisecond), hi.Round(time.Millisecond), watchdog)
	if n := testnotify.Count(healthy, "WATCHDOG=1"); n < expect*6/10 {
		t.Errorf("%d WATCHDOG=1 in %s with the probe passing, want about %d (every %s)", n, window, expect, interval)
	}
	if hi >= watchdog {
		t.Errorf("longest gap between pings %s with the probe passing: systemd kills after %s", hi, watchdog)
	}

	// The cluster listener stops answering: drop its DNS in the node's
	// output hook, before our raw-priority chains.
	inNS(t, node, "nft", "add table inet ldblock; add chain inet ldblock out { type filter hook output priority -400; }; "+
		"add rule inet ldblock out ip daddr "+clusterListener+" udp dport 53 drop; add rule inet ldblock out ip daddr "+clusterListener+" tcp dport 53 drop")
	blocked := time.Now()
	settle := sock.Collect(interval + interval/2 + 200*time.Millisecond) // a probe may have passed just before
	var lastPing time.Time
	for _, n := range settle {
		if n.Has("WATCHDOG=1") {
			lastPing = n.At
		}
	}
	failing := sock.Collect(window)
	if n := testnotify.Count(failing, "WATCHDOG=1"); n != 0 {
		t.Errorf("%d WATCHDOG=1 while %s:53 was blocked", n, clusterListener)
	}
	if !lastPing.IsZero() {
		t.Logf("blocked: last WATCHDOG=1 %s after the drop rule went in, none in the next %s", lastPing.Sub(blocked).Round(time.Millisecond), window)
	} else {
		t.Logf("blocked: no WATCHDOG=1 after the drop rule went in")
	}
	if !strings.Contains(d.Log(), "withholding WATCHDOG=1") {
		t.Errorf("no log line about the failed watchdog probe")
	}

	unblocked := time.Now() // before: the first ping can beat nft's exit
	inNS(t, node, "nft", "delete", "table", "inet", "ldblock")
	ping, _, ok := sock.Next("WATCHDOG=1", watchdog)
	if !ok {
		t.Fatalf("no WATCHDOG=1 within %s after the drop rule was removed", watchdog)
	}
	t.Logf("unblocked: first WATCHDOG=1 %s after the drop rule was removed", ping.At.Sub(unblocked).Round(time.Millisecond))

	// SIGHUP: RELOADING=1 (with MONOTONIC_USEC, for Type=notify-reload),
	// then READY=1 once the new configuration serves; pings go on.
	d.signal(t, syscall.SIGHUP)
	reloading, _, ok := sock.Next("RELOADING=1", 5*time.Second)
	if !ok {
		t.Fatalf("no RELOADING=1 within 5s of SIGHUP; log:\n%s", d.Log())
	}
	if !slices.ContainsFunc(reloading.Lines, func(l string) bool { return strings.HasPrefix(l, "MONOTONIC_USEC=") }) {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", reloading.Lines)
	}
	reloaded, _, ok := sock.Next("READY=1", 5*time.Second)
	if !ok {
		t.Fatalf("no READY=1 within 5s after RELOADING=1; log:\n%s", d.Log())
	}
	t.Logf("SIGHUP: READY=1 %s after RELOADING=1", reloaded.At.Sub(reloading.At).Round(time.Millisecond))
	if _, _, ok := sock.Next("WATCHDOG=1", watchdog); !ok {
		t.Errorf("no WATCHDOG=1 within %s after the reload", watchdog)
	}

	// Every upstream down: the probe zone is answered locally, pings go on.
	up.cluster.Stop()
	up.vnet.Stop()
	down := sock.Collect(window)
	lo, avg, hi = intervals(down)
	t.Logf("upstreams down: %d WATCHDOG=1 in %s, interval min %s avg %s max %s", testnotify.Count(down, "WATCHDOG=1"), window, lo.Round(time.Millisecond), avg.Round(time.Millisecond), hi.Round(time.Millisecond))
	if n := testnotify.Count(down, "WATCHDOG=1"); n < expect*6/10 {
		t.Errorf("%d WATCHDOG=1 in %s with every upstream down, want about %d", n, window, expect)
	}
	if hi >= watchdog {
		t.Errorf("longest gap between pings %s with every upstream down: systemd kills after %s", hi, watchdog)
	}

	d.signal(t, syscall.SIGTERM)
	stopping, _, ok := sock.Next("STOPPING=1", 5*time.Second)
	if !ok {
		t.Fatalf("no STOPPING=1 within 5s of SIGTERM; log:\n%s", d.Log())
	}
	code, exited := d.wait(10 * time.Second)
	if !exited || code != 0 {
		t.Fatalf("after SIGTERM: exited %t, code %d", exited, code)
	}
	after := sock.Collect(100 * time.Millisecond)
	if n := testnotify.Count(after, "WATCHDOG=1"); n != 0 {
		t.Errorf("%d WATCHDOG=1 after STOPPING=1", n)
	}
	t.Logf("STOPPING=1: %q; then %d more notifications", stopping.Lines, len(after))
}

// exitProbe is daemon.ExitProbe: a listener did not answer its self-probe.
const exitProbe = 7

// TestNoReadyWhenSelfProbeFails starts localdns while an nftables rule drops
// DNS to the cluster listener: the self-probe fails, so no READY=1 is sent,
// the conntrack bypass is never installed (a bypass in front of a server that
// does not answer would black-hole DNS), the addresses it added are removed,
// and Required mode exits 7 (ExitProbe).
func TestNoReadyWhenSelfProbeFails(t *testing.T) {
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	cfg := newProfile(t, up).write(t)
	sock := testnotify.Listen(t)
	inNS(t, node, "nft", "add table inet ldblock; add chain inet ldblock out { type filter hook output priority -400; }; "+
		"add rule inet ldblock out ip daddr "+clusterListener+" udp dport 53 drop; add rule inet ldblock out ip daddr "+clusterListener+" tcp dport 53 drop")
	before := nodeState(t, node)

	d := startRun(t, node, cfg, runOpts{env: []string{"NOTIFY_SOCKET=" + sock.Path, "WATCHDOG_USEC=2000000"}})
	code, ok := d.wait(35 * time.Second) // the start-up probe gets 15 s
	if !ok {
		t.Fatalf("localdns did not exit within 35s with its self-probe failing; log:\n%s", d.Log())
	}
	if code != exitProbe {
		t.Errorf("exit code %d with the self-probe failing, want %d (ExitProbe); log:\n%s", code, exitProbe, d.Log())
	}
	got := sock.Collect(200 * time.Millisecond)
	for _, n := range got {
		if n.Has("READY=1") || n.Has("WATCHDOG=1") {
			t.Errorf("sent %q although the self-probe failed", n.Lines)
		}
	}
	if after := nodeState(t, node); after != before {
		t.Errorf("a start that failed its self-probe changed the node:\n%s\nbefore:\n%s", after, before)
	}
	t.Logf("self-probe failing: exit %d, notifications %d, node unchanged", code, len(got))
}
