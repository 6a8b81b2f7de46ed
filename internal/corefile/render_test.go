package corefile_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/corefile"
	"github.com/localdns/localdns/internal/daemon"
	_ "github.com/localdns/localdns/internal/plugins" // the CoreDNS build the Corefile is for
	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the renderer")

// route is a query a started profile must answer, and from where.
type route struct {
	listener string // "node" or "cluster"
	name     string
	qtype    uint16
	want     string // "cluster", "vnet" (which upstream answers) or "nxdomain" (answered locally)
	uncached bool   // the zone caches nothing: a repeat goes upstream again
}

type goldenCase struct {
	file          string
	clusterDomain string
	tcpOnly       bool    // upstreams listen on TCP only: every block must force TCP
	kubeRoot      string  // where the cluster listener's "." goes (default cluster)
	kubeUncached  bool    // the cluster listener's "." caches nothing
	extra         []route // routes beyond the common ones; {run} in a name is the start's number
}

var goldenCases = []goldenCase{
	{file: "aks-default.yaml"},
	{file: "aks-nodepool.json"},
	{file: "custom-zones.yaml", extra: []route{
		{"cluster", "app-{run}.corp.example.com.", dns.TypeA, "vnet", false},
		{"node", "app2-{run}.corp.example.com.", dns.TypeA, "vnet", false},
		{"cluster", "{run}.1.168.192.in-addr.arpa.", dns.TypePTR, "vnet", false},
		{"node", "{run}.2.168.192.in-addr.arpa.", dns.TypePTR, "cluster", false},
		{"node", "svc-{run}.stub.example.", dns.TypeA, "cluster", false},
		{"cluster", "svc2-{run}.stub.example.", dns.TypeA, "cluster", false},
	}},
	{file: "force-tcp.yaml", tcpOnly: true},
	{file: "serve-stale-disable.yaml"},
	{file: "custom-cluster-domain.yaml", clusterDomain: "k8s.corp.example", extra: []route{
		// cluster.local is not this cluster's domain: the VNet answers it.
		{"node", "web.other-{run}.svc.cluster.local.", dns.TypeA, "vnet", false},
		{"cluster", "web2.other-{run}.svc.cluster.local.", dns.TypeA, "cluster", false},
	}},
	{file: "coredns-engine.yaml", extra: []route{
		{"cluster", "a-{run}.nocache.example.", dns.TypeA, "vnet", true},
	}},
	{file: "edge-values.yaml", kubeUncached: true},
	{file: "aks-node-fields.yaml", extra: []route{
		{"cluster", "app-{run}.corp.example.com.", dns.TypeA, "vnet", false},
	}},
}

func (c goldenCase) name() string { return strings.TrimSuffix(c.file, filepath.Ext(c.file)) }

// metricsUsed are the metrics ports earlier starts in this process used.
var metricsUsed = map[int]bool{}

// serveRuns numbers the in-process starts, so that names are unique per
// start even with -count: the cache is process-wide.
var serveRuns atomic.Int32

// routes returns the queries every profile must route: the root of each
// listener, the cluster domain and the reverse zones from both, and the
// search-path junk answered locally. Names are unique per start so that no
// answer comes from an earlier start's cache.
func (c goldenCase) routes(run int) []route {
	cd := c.clusterDomain
	if cd == "" {
		cd = "cluster.local"
	}
	kubeRoot := c.kubeRoot
	if kubeRoot == "" {
		kubeRoot = "cluster"
	}
	tag := fmt.Sprintf("%s-%d", c.name(), run)
	rs := []route{
		{"node", "www." + tag + ".example.net.", dns.TypeA, "vnet", false},
		{"cluster", "www2." + tag + ".example.net.", dns.TypeA, kubeRoot, c.kubeUncached},
		{"node", "kubernetes." + tag + ".svc." + cd + ".", dns.TypeA, "cluster", false},
		{"cluster", "web." + tag + ".svc." + cd + ".", dns.TypeA, "cluster", false},
		{"node", fmt.Sprintf("%d.%d.0.10.in-addr.arpa.", run%256, run/256), dns.TypePTR, "cluster", false},
		{"cluster", fmt.Sprintf("%x.%x.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", run%16, run/16%16), dns.TypePTR, "cluster", false},
		{"node", "a.b.c." + tag + ".internal.cloudapp.net.", dns.TypeA, "nxdomain", false},
		{"cluster", "x." + tag + ".reddog.microsoft.com.", dns.TypeA, "nxdomain", false},
	}
	for _, r := range c.extra {
		r.name = strings.ReplaceAll(r.name, "{run}", fmt.Sprint(run%256))
		rs = append(rs, r)
	}
	return rs
}

// render renders a testdata profile the way `localdns render` does.
func render(t *testing.T, path string) (string, *config.Profile) {
	t.Helper()
	p, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.VNetDNSAuto || p.ClusterDNSAuto {
		t.Fatalf("%s: test profiles must set clusterDNS and vnetDNS explicitly", path)
	}
	ups, err := p.ResolveUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	text, err := corefile.Render(p, ups)
	if err != nil {
		t.Fatal(err)
	}
	return text, p
}

// validate runs the Corefile through CoreDNS's own parser and every
// plugin's setup, without starting anything.
func validate(t *testing.T, name, text string) {
	t.Helper()
	in := caddy.CaddyfileInput{Contents: []byte(text), Filepath: name, ServerTypeName: "dns"}
	if err := caddy.ValidateAndExecuteDirectives(in, nil, true); err != nil {
		t.Fatalf("CoreDNS rejects the Corefile of %s: %v\n%s", name, err, numbered(text))
	}
}

func numbered(text string) string {
	lines := strings.Split(text, "\n")
	for i := range lines {
		lines[i] = fmt.Sprintf("%3d  %s", i+1, lines[i])
	}
	return strings.Join(lines, "\n")
}

func TestGolden(t *testing.T) {
	if len(goldenCases) < 6 {
		t.Fatal("want at least six golden profiles")
	}
	for _, c := range goldenCases {
		t.Run(c.name(), func(t *testing.T) {
			path := filepath.Join("testdata", c.file)
			text, _ := render(t, path)
			again, _ := render(t, path)
			if text != again {
				t.Fatal("two renders of the same profile differ")
			}
			golden := filepath.Join("testdata", c.name()+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/corefile -update)", err)
			}
			if text != string(want) {
				t.Errorf("render of %s differs from %s (go test ./internal/corefile -update rewrites it):\n%s", path, golden, diff(string(want), text))
			}
			validate(t, c.file, text)
		})
	}
}

// diff shows the first differing lines of two texts.
func diff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want %q\n  got  %q", i+1, w, g)
		}
	}
	return "(no difference)"
}

// TestGoldenProfilesServe starts each golden profile in-process on loopback
// with the daemon (render, CoreDNS, sockets, self-probe) and checks that
// every zone is answered by the upstream the profile routes it to.
func TestGoldenProfilesServe(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a CoreDNS instance per profile")
	}
	for _, c := range goldenCases {
		t.Run(c.name(), func(t *testing.T) { serveCase(t, c) })
	}
}

func serveCase(t *testing.T, c goldenCase) {
	run := int(serveRuns.Add(1))
	cluster := testdns.Start(t, "192.0.2.10")
	vnet := testdns.Start(t, "192.0.2.20")
	clusterAddr, vnetAddr := cluster.Addr, vnet.Addr
	if c.tcpOnly {
		clusterAddr, vnetAddr = tcpOnly(t, cluster), tcpOnly(t, vnet)
	}
	// Everything on the listener addresses, none on 127.0.0.1: clients'
	// ephemeral ports (and their TIME_WAIT) live on 127.0.0.1.
	lp := loopback{node: "127.0.0.11", cluster: "127.0.0.12"}
	ports := testbin.FreePorts(t, 4, lp.node, lp.cluster)
	// CoreDNS's prometheus plugin never serves an address again in a process
	// once an instance that served it has stopped (its package-level set of
	// started addresses is only cleared on reload), so each start needs a
	// metrics port of its own.
	for metricsUsed[ports[2]] || slices.Contains([]int{ports[0], ports[1], ports[3]}, ports[2]) {
		ports[2] = testbin.FreePorts(t, 1, lp.node, lp.cluster)[0]
	}
	metricsUsed[ports[2]] = true
	lp.port, lp.ready = ports[0], ports[1]
	lp.metrics = net.JoinHostPort(lp.node, fmt.Sprint(ports[2]))
	lp.health = net.JoinHostPort(lp.cluster, fmt.Sprint(ports[3]))
	dir := t.TempDir()
	path, snapshot := lp.write(t, filepath.Join("testdata", c.file), dir, clusterAddr, vnetAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := daemon.Start(ctx, daemon.Options{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		text, _ := render(t, path)
		t.Fatalf("start %s on loopback: %v\n%s", c.file, err, numbered(text))
	}
	stopped := false
	defer func() {
		if !stopped {
			stopWithin(t, d, 10*time.Second)
		}
	}()

	ups := map[string]*testdns.Upstream{"cluster": cluster, "vnet": vnet}
	addr := map[string]string{
		"node":    net.JoinHostPort(lp.node, fmt.Sprint(lp.port)),
		"cluster": net.JoinHostPort(lp.cluster, fmt.Sprint(lp.port)),
	}
	for _, r := range c.routes(run) {
		checkRoute(t, addr[r.listener], r, ups)
	}
	// The probe zone answers on both listeners, over UDP and TCP.
	for _, a := range addr {
		for _, network := range []string{"udp", "tcp"} {
			// whoami answers with the client's address in the additional section.
			m := testdns.Query(t, network, a, corefile.ProbeZone, dns.TypeA)
			if m.Rcode != dns.RcodeSuccess || len(m.Extra) == 0 || !strings.EqualFold(m.Extra[0].Header().Name, corefile.ProbeZone+".") {
				t.Errorf("probe zone on %s/%s: %s, want whoami's answer:\n%v", a, network, dns.RcodeToString[m.Rcode], m)
			}
		}
	}
	checkHTTP(t, fmt.Sprintf("http://%s/ready", net.JoinHostPort(lp.node, fmt.Sprint(lp.ready))), "OK")
	checkHTTP(t, fmt.Sprintf("http://%s/ready", net.JoinHostPort(lp.cluster, fmt.Sprint(lp.ready))), "OK")
	// The queries above were counted, under this start's node listener.
	checkHTTP(t, "http://"+lp.metrics+"/metrics", fmt.Sprintf(`coredns_dns_requests_total{family="1",proto="udp",server="dns://%s"`, addr["node"]))

	stopped = true
	stopWithin(t, d, 10*time.Second)
	if snapshot != "" {
		if st, err := os.Stat(snapshot); err != nil || st.Size() == 0 {
			t.Errorf("cache snapshot %s not written at stop: %v", snapshot, err)
		}
	}
}

// stopWithin stops d, failing with every goroutine's stack if that takes
// longer than limit (rather than hanging until the test binary's timeout).
func stopWithin(t *testing.T, d *daemon.Daemon, limit time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { d.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		var b strings.Builder
		pprof.Lookup("goroutine").WriteTo(&b, 2)
		t.Fatalf("daemon.Stop did not return within %s; goroutines:\n%s", limit, b.String())
	}
}

// checkRoute sends r to addr and checks who answered, then repeats it to
// check the cache.
func checkRoute(t *testing.T, addr string, r route, ups map[string]*testdns.Upstream) {
	t.Helper()
	desc := fmt.Sprintf("%s %s on the %s listener", r.name, dns.TypeToString[r.qtype], r.listener)
	m := testdns.Query(t, "udp", addr, r.name, r.qtype)
	if r.want == "nxdomain" {
		if m.Rcode != dns.RcodeNameError {
			t.Errorf("%s: %s, want NXDOMAIN answered locally", desc, dns.RcodeToString[m.Rcode])
		}
		for group, u := range ups {
			if n := u.Count(r.name); n != 0 {
				t.Errorf("%s: junk reached the %s upstream %d times", desc, group, n)
			}
		}
		return
	}
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
		t.Errorf("%s: %s with %d answers, want an answer from the %s upstream", desc, dns.RcodeToString[m.Rcode], len(m.Answer), r.want)
		return
	}
	want := ups[r.want].Answer.String()
	var got string
	switch rr := m.Answer[0].(type) {
	case *dns.A:
		got = rr.A.String()
	case *dns.PTR:
		got = strings.TrimSuffix(strings.TrimPrefix(rr.Ptr, "host-"), ".")
	}
	if got != want {
		t.Errorf("%s: answered by %s, want the %s upstream (%s)", desc, got, r.want, want)
	}
	for group, u := range ups {
		wantN := 0
		if group == r.want {
			wantN = 1
		}
		if n := u.Count(r.name); n != wantN {
			t.Errorf("%s: the %s upstream saw it %d times, want %d", desc, group, n, wantN)
		}
	}
	testdns.Query(t, "udp", addr, r.name, r.qtype)
	wantN := 1
	if r.uncached {
		wantN = 2
	}
	if n := ups[r.want].Count(r.name); n != wantN {
		t.Errorf("%s: after a repeat the %s upstream saw it %d times, want %d (cached: %v)", desc, r.want, n, wantN, !r.uncached)
	}
}

func checkHTTP(t *testing.T, url, want string) {
	t.Helper()
	// No keep-alive: an idle connection would hold a loopback port that a
	// later test server may want.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	var last string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.Contains(string(body), want) {
			return
		}
		last = fmt.Sprintf("%s: %s", resp.Status, body)
	}
	t.Errorf("GET %s: want 200 with %q, last: %s", url, want, last)
}

// loopback holds the addresses a profile is moved to for an in-process run.
type loopback struct {
	node, cluster   string
	port, ready     int
	metrics, health string
}

// write rewrites the profile at src for loopback: listeners, ports, metrics
// and health endpoints, the two upstreams, no network management and a snapshot in dir. It
// returns the new profile's path and the snapshot path ("" if the profile
// disables snapshots).
func (lp loopback) write(t *testing.T, src, dir, clusterAddr, vnetAddr string) (string, string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	set := func(m map[string]any, key string, v any) {
		for k := range m {
			if strings.EqualFold(k, key) {
				delete(m, k)
			}
		}
		m[key] = v
	}
	set(doc, "listeners", map[string]any{"node": lp.node, "cluster": lp.cluster})
	set(doc, "port", lp.port)
	set(doc, "readyPort", lp.ready)
	set(doc, "metrics", lp.metrics)
	set(doc, "health", lp.health)
	set(doc, "clusterDNS", []any{clusterAddr})
	set(doc, "vnetDNS", []any{vnetAddr})
	set(doc, "network", map[string]any{"manage": false})
	cache, _ := doc["cache"].(map[string]any)
	if cache == nil {
		cache = map[string]any{}
	}
	snapshot := filepath.Join(dir, "cache.snapshot")
	if s, ok := cache["snapshot"]; ok && s == "" {
		snapshot = ""
	} else if eng, _ := cache["engine"].(string); eng == "coredns" {
		snapshot = "" // the stock cache keeps no snapshot
	} else {
		cache["snapshot"] = snapshot
	}
	doc["cache"] = cache
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "profile.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, snapshot
}

// tcpOnly serves u's answers on a TCP-only address: a query sent over UDP
// to it finds no socket and fails.
func tcpOnly(t *testing.T, u *testdns.Upstream) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	s := &dns.Server{Listener: ln, Handler: u, NotifyStartedFunc: func() { close(started) }}
	go s.ActivateAndServe()
	<-started
	t.Cleanup(func() { s.Shutdown() })
	return ln.Addr().String()
}

func TestRenderNeedsUpstreams(t *testing.T) {
	p := config.Default()
	one := []config.Upstream{netip.MustParseAddrPort("127.0.0.10:53")}
	if _, err := corefile.Render(p, config.Upstreams{VNet: one}); err == nil || !strings.Contains(err.Error(), "no cluster DNS upstream") {
		t.Errorf("no cluster upstream: %v", err)
	}
	if _, err := corefile.Render(p, config.Upstreams{Cluster: one}); err == nil || !strings.Contains(err.Error(), "no VNet DNS upstream") {
		t.Errorf("no VNet upstream: %v", err)
	}
}

// TestRenderDiscoveredSource checks that a Corefile built from discovered
// VNet servers says where they came from (read from a file the test writes).
func TestRenderDiscoveredSource(t *testing.T) {
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 169.254.10.10\nnameserver 127.0.0.53\nnameserver 127.0.0.20\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := config.Parse([]byte(fmt.Sprintf("clusterDNS: [127.0.0.10]\nvnetDNS: auto\nresolvConf: [%s]\n", rc)))
	if err != nil {
		t.Fatal(err)
	}
	ups, err := p.ResolveUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	text, err := corefile.Render(p, ups)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "# VNet DNS servers discovered from "+rc+".\n") {
		t.Errorf("no source comment:\n%s", text)
	}
	if strings.Contains(text, "169.254.10.10:53") || strings.Contains(text, "127.0.0.53") || !strings.Contains(text, "to 127.0.0.20:53\n") {
		t.Errorf("upstreams not the discovered, filtered ones:\n%s", text)
	}
	validate(t, "discovered", text)
}

// TestRenderIPv6 renders an IPv6-only profile and has CoreDNS parse it:
// brackets where a port follows, none in bind.
func TestRenderIPv6(t *testing.T) {
	p, err := config.Parse([]byte(`
listeners: {node: "fd00:10::10", cluster: "fd00:10::11"}
clusterDNS: ["fd00::10"]
vnetDNS: ["[fd00::20]:5353"]
metrics: "[::1]:9253"
`))
	if err != nil {
		t.Fatal(err)
	}
	ups, _ := p.ResolveUpstreams()
	text, err := corefile.Render(p, ups)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bind fd00:10::10 fd00:10::11\n", "bind fd00:10::11\n", "ready [fd00:10::10]:8181\n", "prometheus [::1]:9253\n", "to [fd00::10]:53\n", "to [fd00::20]:5353\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("IPv6 Corefile lacks %q", want)
		}
	}
	validate(t, "ipv6", text)
}

// TestProbeZoneIsReserved checks that the profile refuses the zone the
// renderer uses for probes: a second block for it would stop CoreDNS from
// starting, after validate had said the profile was fine.
func TestProbeZoneIsReserved(t *testing.T) {
	_, err := config.Parse([]byte("kubeDNSOverrides: {\".\": {}, " + corefile.ProbeZone + ": {}}\n"))
	if err == nil || !strings.Contains(err.Error(), "is reserved") {
		t.Fatalf("profile with the probe zone %s: %v", corefile.ProbeZone, err)
	}
}
