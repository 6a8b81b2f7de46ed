package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestNodeLifecycle follows one node through what an operator does to it:
// start, pods resolving, hand-made damage repaired by the reconcile loop, a
// clean stop, a second start, a SIGKILL and `localdns teardown` after it.
func TestNodeLifecycle(t *testing.T) {
	node := newNS(t, "node")
	pod := newPod(t, node)
	up := startUpstreams(t, node)
	prof := newProfile(t, up)
	prof.Reconcile = time.Second
	cfg := prof.write(t)

	before := nodeState(t, node)

	// Start: addresses on lo (no dummy link type on this kernel) and the
	// table, and the pod gets answers through the veth.
	d := startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	if got := listenerAddrs(t, node); got[nodeListener] != 1 || got[clusterListener] != 1 {
		t.Fatalf("listener addresses after start: %v, want each once\n%s", got, run(t, "ip", "-n", node, "addr", "show"))
	}
	lo := run(t, "ip", "-n", node, "-o", "addr", "show", "dev", "lo")
	if !strings.Contains(lo, clusterListener+"/32") || !strings.Contains(lo, nodeListener+"/32") {
		t.Errorf("listener addresses not on lo:\n%s", lo)
	}
	rules, table := notrackRules(t, node)
	if rules == 0 {
		t.Fatalf("no notrack rules in inet localdns after start:\n%s", inNS(t, node, "nft", "list", "ruleset"))
	}
	t.Logf("after start: %d notrack rules in inet localdns", rules)

	podQuery := func(name string) {
		t.Helper()
		r, err := exchange(t, pod, "udp", clusterListener+":53", name, dns.TypeA, 2*time.Second)
		if err != nil {
			t.Fatalf("pod query %s to %s: %v", name, clusterListener, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.10" {
			t.Fatalf("pod query %s: %s %v, want the cluster upstream's 192.0.2.10", name, dns.RcodeToString[r.Rcode], r.Answer)
		}
	}
	podQuery("www.example.org.")
	podQuery("kube-dns.kube-system.svc.cluster.local.")
	if r, err := exchange(t, pod, "tcp", clusterListener+":53", "www.example.org.", dns.TypeA, 2*time.Second); err != nil || len(r.Answer) != 1 {
		t.Fatalf("pod query over TCP: %v %v", r, err)
	}

	// Damage by hand: the reconcile loop (1 s) puts both back.
	run(t, "ip", "-n", node, "addr", "del", clusterListener+"/32", "dev", "lo")
	inNS(t, node, "nft", "delete", "table", "inet", "localdns")
	took, ok := eventually(5*time.Second, func() bool {
		n, _ := notrackRules(t, node)
		return listenerAddrs(t, node)[clusterListener] == 1 && n == rules
	})
	if !ok {
		t.Fatalf("address and table not back within 5s (reconcile interval %s): addresses %v\n%s", prof.Reconcile, listenerAddrs(t, node), d.Log())
	}
	t.Logf("address and table deleted by hand were back after %s (reconcile interval %s)", took.Round(time.Millisecond), prof.Reconcile)
	if took > prof.Reconcile+time.Second {
		t.Errorf("repair took %s, more than the reconcile interval %s (+1s)", took, prof.Reconcile)
	}
	if _, table2 := notrackRules(t, node); stripCounters(table2) != stripCounters(table) {
		t.Errorf("repaired table differs from the original:\n%s\nwant:\n%s", table2, table)
	}
	podQuery("after-repair.example.org.")

	// Clean stop: not socket-activated, so everything goes.
	d.stop(t)
	if after := nodeState(t, node); after != before {
		t.Errorf("node after a clean stop differs from before start:\n%s\nbefore:\n%s", after, before)
	}

	// A second run: the same addresses and rules, once each.
	d2 := startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d2)
	if got := listenerAddrs(t, node); got[nodeListener] != 1 || got[clusterListener] != 1 {
		t.Errorf("listener addresses on the second run: %v, want each once", got)
	}
	if n, listing := notrackRules(t, node); n != rules {
		t.Errorf("second run has %d notrack rules, the first had %d:\n%s", n, rules, listing)
	}
	if n := strings.Count(inNS(t, node, "nft", "list", "tables"), "localdns"); n != 1 {
		t.Errorf("%d localdns tables on the second run", n)
	}
	podQuery("second-run.example.org.")

	// SIGKILL leaves everything behind; teardown removes it, twice is fine.
	d2.signal(t, syscall.SIGKILL)
	if _, ok := d2.wait(5 * time.Second); !ok {
		t.Fatal("localdns did not die on SIGKILL")
	}
	if got := listenerAddrs(t, node); got[clusterListener] != 1 || !hasTable(t, node) {
		t.Fatalf("after SIGKILL expected addresses and table left behind, got %v, table %t", got, hasTable(t, node))
	}
	for i := 1; i <= 2; i++ {
		out, err := exec.Command("ip", "netns", "exec", node, binary, "teardown", "--config", cfg).CombinedOutput()
		if err != nil {
			t.Fatalf("teardown #%d: %v\n%s", i, err, out)
		}
		t.Logf("teardown #%d: %s", i, strings.TrimSpace(string(out)))
		if after := nodeState(t, node); after != before {
			t.Errorf("node after teardown #%d differs from before start:\n%s\nbefore:\n%s", i, after, before)
		}
		if _, err := os.Stat(filepath.Join(prof.Dir, "run", "netsetup.json")); !os.IsNotExist(err) {
			t.Errorf("state file still there after teardown #%d (stat: %v)", i, err)
		}
	}
}

// stripCounters removes nft's packet and byte counters from a listing.
func stripCounters(s string) string {
	return counterRE.ReplaceAllString(s, "counter")
}

// TestRunAfterCrash starts localdns again after a SIGKILL without a teardown
// in between (Restart=on-failure when ExecStopPost did not run): the new
// process takes over what the old one left, duplicates nothing, and a clean
// stop then removes all of it.
func TestRunAfterCrash(t *testing.T) {
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	cfg := newProfile(t, up).write(t)
	before := nodeState(t, node)

	d := startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	rules, _ := notrackRules(t, node)
	d.signal(t, syscall.SIGKILL)
	if _, ok := d.wait(5 * time.Second); !ok {
		t.Fatal("localdns did not die on SIGKILL")
	}

	d = startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	if got := listenerAddrs(t, node); got[nodeListener] != 1 || got[clusterListener] != 1 {
		t.Errorf("listener addresses after a run following a crash: %v, want each once", got)
	}
	if n, listing := notrackRules(t, node); n != rules {
		t.Errorf("%d notrack rules after a run following a crash, %d before:\n%s", n, rules, listing)
	}
	d.stop(t)
	if after := nodeState(t, node); after != before {
		t.Errorf("node after crash, run and clean stop differs from before:\n%s\nbefore:\n%s", after, before)
	}
}

// TestPreexistingAddressKept: a listener address that was on the node before
// localdns started (configured by someone else) is used, and left in place
// when localdns stops; the one localdns added goes.
func TestPreexistingAddressKept(t *testing.T) {
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	cfg := newProfile(t, up).write(t)
	holdAddr(t, node, clusterListener)
	before := nodeState(t, node)

	d := startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	if got := listenerAddrs(t, node); got[nodeListener] != 1 || got[clusterListener] != 1 {
		t.Errorf("listener addresses while serving: %v, want each once", got)
	}
	d.stop(t)
	if after := nodeState(t, node); after != before {
		t.Errorf("node after stop differs from before (the pre-existing %s must stay, %s must go):\n%s\nbefore:\n%s", clusterListener, nodeListener, after, before)
	}
	out := inNS(t, node, binary, "teardown", "--config", cfg)
	if after := nodeState(t, node); after != before {
		t.Errorf("teardown (%s) changed the node: a pre-existing address is not ours to remove:\n%s", strings.TrimSpace(out), after)
	}
}
