// Package observability proves that localdns's monitoring works end to end:
// it runs the built binary against upstreams the tests start on loopback,
// sends traffic, scrapes the live Prometheus endpoint and checks that every
// counter moves as it should, that /health, /ready and /status tell the
// truth, that every metric the shipped alerts (deploy/prometheus) and
// dashboard (deploy/grafana) use is exported, and that our metrics pass
// Prometheus's lint.
package observability

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/internal/testnotify"
)

var binary string

func TestMain(m *testing.M) { testbin.Main(m, &binary) }

// repoRoot is where deploy/ lives, relative to this package.
const repoRoot = "../.."

// daemon is a running `localdns run`.
type daemon struct {
	cmd      *exec.Cmd
	log      testbin.Log
	done     chan error
	stopOnce sync.Once
}

// Log returns what the daemon logged so far.
func (d *daemon) Log() string { return d.log.String() }

// stop sends SIGTERM and waits for the exit (the daemon writes its cache
// snapshot on the way out).
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.stopOnce.Do(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
			t.Errorf("localdns did not stop on SIGTERM within 10s")
		}
	})
}

// rig is a localdns on two loopback listeners with two test upstreams: the
// cluster CoreDNS (answers 192.0.2.10) and the VNet DNS (192.0.2.20).
type rig struct {
	cluster, vnet  *testdns.Upstream
	node, pods     string // listener addresses ip:port
	port           int
	metrics        string // host:port of the Prometheus endpoint
	health         string // host:port of /health, /ready, /status
	profile        string // path
	snapshot       string // path
	d              *daemon
	notify         *testnotify.Socket
	nodeIP, podsIP string
	prom           *prometheusServer // nil without the prometheus binary
	fired          map[string]bool   // alerts whose condition held in Prometheus
}

// The cache keeps answers for cacheDurationInSeconds: 5 (the cache's floor)
// so a test can watch entries go stale; serve-stale is AKS's default,
// Immediate for an hour.
const profileTemplate = `# observability test profile: loopback listeners, test upstreams, no network changes.
listeners: {node: %s, cluster: %s}
port: %d
readyPort: %d
clusterDNS: [%s]
vnetDNS: [%s]
failoverToVNetDNS: true
network: {manage: false}
metrics: %s
health: %s
cache: {snapshot: %s}
vnetDNSOverrides:
  ".": {forwardDestination: VnetDNS, cacheDurationInSeconds: 5}
  cluster.local: {cacheDurationInSeconds: 5}
kubeDNSOverrides:
  ".": {forwardDestination: ClusterCoreDNS, cacheDurationInSeconds: 5}
  cluster.local: {cacheDurationInSeconds: 5}
`

const ttl = 5 * time.Second

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{
		cluster: testdns.Start(t, "192.0.2.10"),
		vnet:    testdns.Start(t, "192.0.2.20"),
		nodeIP:  "127.0.30.1",
		podsIP:  "127.0.30.2",
		fired:   map[string]bool{},
	}
	ports := testbin.FreePorts(t, 4)
	r.port = ports[0]
	r.node = net.JoinHostPort(r.nodeIP, fmt.Sprint(r.port))
	r.pods = net.JoinHostPort(r.podsIP, fmt.Sprint(r.port))
	r.metrics = fmt.Sprintf("127.0.0.1:%d", ports[2])
	r.health = fmt.Sprintf("127.0.0.1:%d", ports[3])
	dir := t.TempDir()
	r.profile = filepath.Join(dir, "localdns.yaml")
	r.snapshot = filepath.Join(dir, "cache.snapshot")
	text := fmt.Sprintf(profileTemplate, r.nodeIP, r.podsIP, r.port, ports[1], r.cluster.Addr, r.vnet.Addr, r.metrics, r.health, r.snapshot)
	if err := os.WriteFile(r.profile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// start runs `localdns run --config profile` as systemd would run it with
// WatchdogSec=5s (NOTIFY_SOCKET is a socket the test reads, so the watchdog
// self-probe and its metrics run), and waits until both listeners answer and
// /ready says so (the first health checks of the upstreams done).
func (r *rig) start(t *testing.T) {
	t.Helper()
	d := &daemon{done: make(chan error, 1)}
	notify := testnotify.Listen(t)
	d.cmd = exec.Command(binary, "run", "--config", r.profile)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.Path, "WATCHDOG_USEC=5000000")
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.notify = notify
	go func() { d.done <- d.cmd.Wait() }()
	r.d = d
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("localdns log:\n%s", d.Log())
		}
	})
	waitFor(t, 15*time.Second, "both listeners answer", func() bool {
		for _, l := range []string{r.node, r.pods} {
			if _, err := testdns.Exchange("udp", l, "health-check.localdns.local.", dns.TypeA); err != nil {
				return false
			}
		}
		return true
	})
	// The health endpoint is served once start-up (self-probe) is complete.
	waitFor(t, 10*time.Second, "/ready 200", func() bool {
		c := &http.Client{Timeout: time.Second}
		resp, err := c.Get("http://" + r.health + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// get fetches path from the health endpoint.
func (r *rig) get(t *testing.T, path string) (int, string) {
	t.Helper()
	return httpGet(t, "http://"+r.health+path)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// scrape is one scrape of the live Prometheus endpoint.
type scrape struct {
	text     string
	families map[string]*dto.MetricFamily
}

func (r *rig) scrape(t *testing.T) scrape {
	t.Helper()
	code, body := httpGet(t, "http://"+r.metrics+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("scrape %s: HTTP %d", r.metrics, code)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return scrape{text: body, families: fams}
}

// value sums the samples of name whose labels include all of labels
// (counters, gauges; for histograms the observation count).
func (s scrape) value(name string, labels ...string) float64 {
	f := s.families[name]
	if f == nil {
		return 0
	}
	var sum float64
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// series counts the series of name whose labels include all of labels.
func (s scrape) series(name string, labels ...string) int {
	n := 0
	for _, m := range s.families[name].GetMetric() {
		if hasLabels(m, labels) {
			n++
		}
	}
	return n
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testbin.WaitFor(t, timeout, what, cond)
}
