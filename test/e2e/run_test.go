// Package e2e runs the built localdns binary against upstreams the tests
// start on loopback: routing per listener and zone, and reloads on SIGHUP.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

var binary string

func TestMain(m *testing.M) { testbin.Main(m, &binary) }

// Daemon is a running localdns process.
type Daemon struct {
	cmd *exec.Cmd
	log testbin.Log
}

// Log returns what the daemon logged so far.
func (d *Daemon) Log() string { return d.log.String() }

// startDaemon runs `localdns run` with args and waits until probe answers.
func startDaemon(t *testing.T, probe string, args ...string) *Daemon {
	t.Helper()
	d := &Daemon{}
	d.cmd = exec.Command(binary, append([]string{"run"}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- d.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			t.Errorf("localdns did not stop on SIGTERM within 10s")
		}
		if t.Failed() {
			t.Logf("localdns log:\n%s", d.Log())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := testdns.Exchange("udp", probe, "health-check.localdns.local.", dns.TypeA); err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("localdns did not answer on %s within 15s; log:\n%s", probe, d.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type rig struct {
	cluster, vnet *testdns.Upstream
	node, pods    string // listener addresses ip:port
	profile       string // path
	port, ready   int
	metrics       string
}

const profileTemplate = `# e2e profile: loopback listeners, test upstreams, no network changes.
listeners: {node: 127.0.20.1, cluster: 127.0.20.2}
port: %d
readyPort: %d
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: false}
metrics: %s
cache: {snapshot: ""}
kubeDNSOverrides:
  ".": {forwardDestination: %s}
  cluster.local: {}
`

func newRig(t *testing.T) *rig {
	r := &rig{cluster: testdns.Start(t, "192.0.2.10"), vnet: testdns.Start(t, "192.0.2.20")}
	ports := testbin.FreePorts(t, 3)
	r.port, r.ready = ports[0], ports[1]
	r.metrics = fmt.Sprintf("127.0.0.1:%d", ports[2])
	r.node = fmt.Sprintf("127.0.20.1:%d", r.port)
	r.pods = fmt.Sprintf("127.0.20.2:%d", r.port)
	r.profile = filepath.Join(t.TempDir(), "localdns.yaml")
	r.write(t, "ClusterCoreDNS")
	return r
}

func (r *rig) write(t *testing.T, podRootDestination string) {
	t.Helper()
	text := fmt.Sprintf(profileTemplate, r.port, r.ready, r.cluster.Addr, r.vnet.Addr, r.metrics, podRootDestination)
	if err := os.WriteFile(r.profile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// answeredBy queries name on listener and says which upstream answered.
func (r *rig) answeredBy(t *testing.T, listener, name string, qtype uint16) string {
	t.Helper()
	m := testdns.Query(t, "udp", listener, name, qtype)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
		t.Fatalf("%s %s on %s: %s with %d answers", name, dns.TypeToString[qtype], listener, dns.RcodeToString[m.Rcode], len(m.Answer))
	}
	switch rr := m.Answer[0].(type) {
	case *dns.A:
		return map[string]string{"192.0.2.10": "cluster", "192.0.2.20": "vnet"}[rr.A.String()]
	case *dns.PTR:
		return map[string]string{"host-192.0.2.10.": "cluster", "host-192.0.2.20.": "vnet"}[rr.Ptr]
	}
	t.Fatalf("unexpected answer %v", m.Answer[0])
	return ""
}

func TestRoutingPerListenerAndZone(t *testing.T) {
	r := newRig(t)
	startDaemon(t, r.node, "--config", r.profile)

	cases := []struct {
		listener, name string
		qtype          uint16
		want           string
	}{
		{r.node, "www.example.com.", dns.TypeA, "vnet"},                           // node "." always VNet
		{r.node, "kube-dns.kube-system.svc.cluster.local.", dns.TypeA, "cluster"}, // cluster domain
		{r.node, "10.0.0.10.in-addr.arpa.", dns.TypePTR, "cluster"},               // reverse zone
		{r.pods, "www.example.org.", dns.TypeA, "cluster"},                        // pods' "." per profile: ClusterCoreDNS
		{r.pods, "api.default.svc.cluster.local.", dns.TypeA, "cluster"},
		{r.pods, "1.0.0.10.in-addr.arpa.", dns.TypePTR, "cluster"},
	}
	for _, c := range cases {
		if got := r.answeredBy(t, c.listener, c.name, c.qtype); got != c.want {
			t.Errorf("%s on %s answered by %q, want %q", c.name, c.listener, got, c.want)
		}
	}
	// Asked again: answered from the cache.
	for _, c := range cases {
		r.answeredBy(t, c.listener, c.name, c.qtype)
	}
	// Each name reached exactly the upstream it should, once (then cached).
	for _, c := range cases {
		right, wrong := r.cluster, r.vnet
		if c.want == "vnet" {
			right, wrong = r.vnet, r.cluster
		}
		if n := right.Count(c.name); n != 1 {
			t.Errorf("%s reached its upstream (%s) %d times, want once", c.name, c.want, n)
		}
		if n := wrong.Count(c.name); n != 0 {
			t.Errorf("%s also reached the wrong upstream %d times", c.name, n)
		}
	}
	// `localdns probe` finds both listeners answering over UDP and TCP.
	out, err := exec.Command(binary, "probe", "--config", r.profile).CombinedOutput()
	if err != nil || strings.Count(string(out), "ok ") != 4 {
		t.Errorf("localdns probe: %v\n%s", err, out)
	}
	// Junk search-path names never leave the node.
	before := r.vnet.Total() + r.cluster.Total()
	m := testdns.Query(t, "udp", r.node, "a.b.c.d.internal.cloudapp.net.", dns.TypeA)
	if m.Rcode != dns.RcodeNameError {
		t.Errorf("junk name answered %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	if after := r.vnet.Total() + r.cluster.Total(); after != before {
		t.Errorf("junk name reached an upstream")
	}
}

func TestReloadOnSIGHUP(t *testing.T) {
	r := newRig(t)
	d := startDaemon(t, r.node, "--config", r.profile)
	if got := r.answeredBy(t, r.pods, "before.example.", dns.TypeA); got != "cluster" {
		t.Fatalf("before reload: answered by %s", got)
	}

	// A broken profile is refused; the running one keeps serving.
	if err := os.WriteFile(r.profile, []byte("port: 0\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(d.Log(), "keeping the running configuration") }, "reload error in log")
	for _, want := range []string{"bogus: unknown field", "port"} {
		if !strings.Contains(d.Log(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if got := r.answeredBy(t, r.pods, "during.example.", dns.TypeA); got != "cluster" {
		t.Fatalf("after a broken reload: answered by %s", got)
	}

	// A changed profile takes effect: pods' "." now goes to VNet DNS.
	r.write(t, "VnetDNS")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(d.Log(), "msg=reloaded") }, "reload in log")
	if got := r.answeredBy(t, r.pods, "after.example.", dns.TypeA); got != "vnet" {
		t.Fatalf("after reload: answered by %s, want vnet", got)
	}
	if got := r.answeredBy(t, r.pods, "x.default.svc.cluster.local.", dns.TypeA); got != "cluster" {
		t.Fatalf("cluster names after reload: answered by %s, want cluster", got)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testbin.WaitFor(t, 10*time.Second, what, cond)
}

func TestKubernetesSchemaGuardOptIn(t *testing.T) {
	r := newRig(t)
	f, err := os.OpenFile(r.profile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("junk: {kubernetesSchema: true}\n")
	f.Close()
	startDaemon(t, r.node, "--config", r.profile)

	// ndots:5 expansions of api.github.com that the schema cannot produce.
	for _, name := range []string{"api.github.com.cluster.local.", "api.github.com.default.svc.cluster.local."} {
		m := testdns.Query(t, "udp", r.pods, name, dns.TypeA)
		if m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
			t.Errorf("%s: %s with %d authority records, want NXDOMAIN with an SOA", name, dns.RcodeToString[m.Rcode], len(m.Ns))
		}
		if n := r.cluster.Count(name); n != 0 {
			t.Errorf("%s reached cluster CoreDNS %d times", name, n)
		}
	}
	// A real service name still reaches cluster CoreDNS.
	if got := r.answeredBy(t, r.pods, "api.default.svc.cluster.local.", dns.TypeA); got != "cluster" {
		t.Errorf("service name answered by %q", got)
	}
}
