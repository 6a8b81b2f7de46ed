package node

import (
	"net"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testdns"
)

// TestConntrackThroughBinary sends thousands of queries from a pod, each from
// a fresh source port, to the cluster listener of the real binary, and
// counts conntrack entries in the node namespace: with
// network.replyNotrack: true there must be none; with false every reply
// creates one (logged, and checked to show that conntrack is really running).
func TestConntrackThroughBinary(t *testing.T) {
	const queries = 3000
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_count"); err != nil {
		t.Skipf("skipping: conntrack is not available in this kernel: %v", err)
	}
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skipf("skipping: conntrack tool not installed: %v", err)
	}
	node := newNS(t, "node")
	pod := newPod(t, node)
	up := startUpstreams(t, node)
	// Conntrack hooks run in a namespace only once some rule needs them, as
	// kube-proxy's or a CNI's rules do on a real node.
	inNS(t, node, "nft", "add table inet ctprobe; add chain inet ctprobe pre { type filter hook prerouting priority 0; }; add rule inet ctprobe pre ct state new counter")

	wire := func() []byte {
		q := new(dns.Msg)
		q.SetQuestion("cached.example.org.", dns.TypeA)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}()
	// send sends the queries from the pod, each on its own socket with its
	// own source port from base on, and returns how many were answered.
	send := func(base int) int {
		answered := 0
		err := withNS(t, pod, func() error {
			var err error
			answered, err = testdns.QueryFromPorts(net.ParseIP(podIP), base, &net.UDPAddr{IP: net.ParseIP(clusterListener), Port: 53}, wire, queries)
			return err
		})
		if err != nil {
			t.Fatalf("querying from the pod: %v", err)
		}
		return answered
	}
	// flows lists conntrack entries by protocol and original-direction
	// tuple (each with its full line), split by whether a listener address
	// is on either side.
	flows := func() (listener, other map[string]string) {
		listener, other = map[string]string{}, map[string]string{}
		// stdout only: conntrack's summary on stderr can land inside a line.
		out, err := exec.Command("ip", "netns", "exec", node, "conntrack", "-L").Output()
		if err != nil {
			t.Fatalf("conntrack -L: %v", err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			key := []string{f[0]}
			for _, field := range f[1:] {
				k, _, ok := strings.Cut(field, "=")
				if !ok || !slices.Contains([]string{"src", "dst", "sport", "dport", "type", "code", "id"}, k) {
					continue
				}
				if k == "src" && len(key) > 1 {
					break // the reply direction
				}
				key = append(key, field)
			}
			if strings.Contains(line, "="+clusterListener+" ") || strings.Contains(line, "="+nodeListener+" ") {
				listener[strings.Join(key, " ")] = line
			} else {
				other[strings.Join(key, " ")] = line
			}
		}
		return listener, other
	}
	added := func(before, after map[string]string) []string {
		var out []string
		for k, line := range after {
			if _, ok := before[k]; !ok {
				out = append(out, line)
			}
		}
		sort.Strings(out)
		return out
	}

	type result struct {
		total, answered int
		listener, other []string // flows added
	}
	measure := func(replyNotrack bool, base int) result {
		t.Helper()
		prof := newProfile(t, up)
		prof.ReplyNotrack = replyNotrack
		d := startRun(t, node, prof.write(t), runOpts{})
		waitServing(t, node, d)
		// Warm the cache, so no query below goes upstream.
		if r, err := exchange(t, pod, "udp", clusterListener+":53", "cached.example.org.", dns.TypeA, 2*time.Second); err != nil || len(r.Answer) != 1 {
			t.Fatalf("warming the cache: %v %v", r, err)
		}
		time.Sleep(200 * time.Millisecond)
		total := conntrackCount(t, node)
		listener, other := flows()
		res := result{answered: send(base)}
		res.total = conntrackCount(t, node) - total
		listener2, other2 := flows()
		res.listener, res.other = added(listener, listener2), added(other, other2)
		d.stop(t)
		return res
	}

	on := measure(true, 20000)
	off := measure(false, 30000)
	t.Logf("%d pod queries, fresh source port each, through localdns: replyNotrack=true: nf_conntrack_count %+d (new flows: %d of the listeners, %d others), %d answered; replyNotrack=false: nf_conntrack_count %+d (new flows: %d of the listeners, %d others), %d answered",
		queries, on.total, len(on.listener), len(on.other), on.answered, off.total, len(off.listener), len(off.other), off.answered)
	if len(on.other) > 0 {
		// localdns's own upstream health checks on the node's loopback:
		// not DNS from pods, and not what the bypass is for.
		t.Logf("replyNotrack=true: other flows created meanwhile (not to or from a listener):\n  %s", strings.Join(on.other, "\n  "))
	}

	for _, r := range []result{on, off} {
		if r.answered != queries {
			t.Errorf("%d of %d queries answered", r.answered, queries)
		}
	}
	if len(on.listener) != 0 {
		t.Errorf("replyNotrack=true: %d new conntrack flows of the listeners, want 0:\n  %s", len(on.listener), strings.Join(on.listener, "\n  "))
	}
	// nf_conntrack_count moves by the flows of the daemon's own upstream
	// health checks (listed above; a few per second), never by one per
	// query. (A health check between reading the count and listing the
	// flows can land on either side, hence the small slack.)
	if on.total-len(on.other) > queries/100 {
		t.Errorf("replyNotrack=true: nf_conntrack_count grew by %d over %d queries (%d other flows)", on.total, queries, len(on.other))
	}
	// The control: without reply notrack each reply is a new flow. If this
	// fails, conntrack is not running in the namespace and the checks above
	// prove nothing.
	if len(off.listener) < queries*95/100 {
		t.Errorf("replyNotrack=false: only %d listener flows for %d queries: is conntrack running in the namespace?", len(off.listener), queries)
	}
}
