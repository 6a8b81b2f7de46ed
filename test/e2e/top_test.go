package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/plugin/clientbudget"
)

const topProfile = `# e2e profile for localdns top: a small client budget.
listeners: {node: 127.0.21.1, cluster: 127.0.21.2}
port: %d
readyPort: %d
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: false}
metrics: 127.0.0.1:%d
health: 127.0.0.1:%d
cache: {snapshot: ""}
clientBudget: {queriesPerSecond: 5, burst: 10}
`

// askFrom sends each name from src to server over UDP and waits for its
// answer (any rcode).
func askFrom(t *testing.T, src, server string, names []string) {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(netipAddrPort(t, server)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for _, name := range names {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("%s from %s: %v", name, src, err)
		}
	}
}

// TestTopShowsTheBusiestPod runs the daemon, has one pod ask a hot name
// (cache hits, answered by the fast path) and many new names (beyond its
// budget), another pod a few names, and checks that `localdns top` and
// /status name the first pod, with its namespace/name from a pod list.
func TestTopShowsTheBusiestPod(t *testing.T) {
	cluster, vnet := testdns.Start(t, "192.0.2.10"), testdns.Start(t, "192.0.2.20")
	ports := testbin.FreePorts(t, 4)
	profile := filepath.Join(t.TempDir(), "localdns.yaml")
	os.WriteFile(profile, []byte(fmt.Sprintf(topProfile, ports[0], ports[1], cluster.Addr, vnet.Addr, ports[2], ports[3])), 0o644)
	pods := filepath.Join(t.TempDir(), "pods.json")
	os.WriteFile(pods, []byte(`{"kind": "PodList", "items": [
  {"metadata": {"namespace": "shop", "name": "crawler-7d9f"}, "spec": {}, "status": {"podIP": "127.0.0.5", "podIPs": [{"ip": "127.0.0.5"}]}},
  {"metadata": {"namespace": "shop", "name": "web-1"}, "spec": {}, "status": {"podIP": "127.0.0.6"}},
  {"metadata": {"namespace": "kube-system", "name": "kube-proxy"}, "spec": {"hostNetwork": true}, "status": {"podIP": "127.0.0.1"}}
]}`), 0o644)
	pods_ := fmt.Sprintf("127.0.21.2:%d", ports[0])
	startDaemon(t, pods_, "--config", profile)

	hot := make([]string, 40)
	for i := range hot {
		hot[i] = "hot.shop.svc.cluster.local."
	}
	askFrom(t, "127.0.0.5", pods_, hot)
	var fresh []string
	for i := range 40 {
		fresh = append(fresh, fmt.Sprintf("new%d.example.com.", i))
	}
	askFrom(t, "127.0.0.5", pods_, fresh)
	askFrom(t, "127.0.0.6", pods_, []string{"api.example.org.", "db.shop.svc.cluster.local."})

	out, err := exec.Command(binary, "top", "--config", profile, "--json", "-n", "10", "--pods", pods).CombinedOutput()
	if err != nil {
		t.Fatalf("localdns top: %v\n%s", err, out)
	}
	var top clientbudget.Top
	if err := json.Unmarshal(out, &top); err != nil {
		t.Fatalf("top --json: %v\n%s", err, out)
	}
	if len(top.Clients) < 2 {
		t.Fatalf("top shows %d clients: %s", len(top.Clients), out)
	}
	c := top.Clients[0]
	if c.Client != "127.0.0.5" || c.Pod != "shop/crawler-7d9f" || c.Queries != 80 || c.Misses != 41 || c.Limited == 0 {
		t.Errorf("busiest client %+v, want 127.0.0.5 shop/crawler-7d9f with 80 queries (40 hits counted at the socket), 41 misses, some limited", c)
	}
	var other *clientbudget.ClientStat
	for i := range top.Clients {
		if top.Clients[i].Client == "127.0.0.6" {
			other = &top.Clients[i]
		}
	}
	if other == nil || other.Pod != "shop/web-1" || other.Queries != 2 || other.Limited != 0 {
		t.Errorf("the other pod: %+v in %+v", other, top.Clients)
	}
	if len(top.Asked) == 0 || top.Asked[0].Name != "hot.shop.svc.cluster.local." || top.Asked[0].Count != 40 {
		t.Errorf("most asked: %+v", top.Asked)
	}
	if top.QueriesPerSecond != 5 || top.Burst != 10 {
		t.Errorf("budget %v/%d, want 5/10", top.QueriesPerSecond, top.Burst)
	}

	text, err := exec.Command(binary, "top", "--config", profile, "--pods", pods).CombinedOutput()
	if err != nil {
		t.Fatalf("localdns top: %v\n%s", err, text)
	}
	for _, want := range []string{"CLIENT", "127.0.0.5", "shop/crawler-7d9f", "MOST ASKED", "hot.shop.svc.cluster.local.", "MOST MISSED"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("top output lacks %q:\n%s", want, text)
		}
	}
	t.Logf("localdns top:\n%s", text)
}

func netipAddrPort(t *testing.T, s string) netip.AddrPort {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AddrPort()
}
