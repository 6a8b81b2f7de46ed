package observability

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
)

// prometheusServer is a Prometheus (Debian package prometheus) the test runs
// against the live endpoint with a 1 s scrape interval.
type prometheusServer struct {
	addr string
	cmd  *exec.Cmd
	log  testbin.Log
}

// startPrometheus returns nil when prometheus is not installed.
func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: localdns
    static_configs: [{targets: [%q]}]
`, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &prometheusServer{addr: fmt.Sprintf("127.0.0.1:%d", testbin.FreePorts(t, 1)[0])}
	p.cmd = exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+p.addr, "--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.log.String())
		}
	})
	return p
}

// query evaluates expr now and returns the number of series in the result.
func (p *prometheusServer) query(expr string) (int, error) {
	series, err := p.series(expr)
	return len(series), err
}

// series evaluates expr now and returns the label sets of the result (one
// empty set for a scalar).
func (p *prometheusServer) series(expr string) ([]map[string]string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s", r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return []map[string]string{{}}, nil
	}
	var out []map[string]string
	for _, raw := range r.Data.Result {
		var e struct {
			Metric map[string]string `json:"metric"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		out = append(out, e.Metric)
	}
	return out, nil
}

// alertExpr returns the expression of the named alert in alerts.yaml.
func alertExpr(t *testing.T, name string) string {
	t.Helper()
	for _, a := range loadAlerts(t) {
		if a.Alert == name {
			return a.Expr
		}
	}
	t.Fatalf("no alert %s in %s", name, alertsPath)
	return ""
}

// waitAlert waits until the named alert's expression holds (want) or not
// (!want) in Prometheus, and returns the label sets it yields.
func (r *rig) waitAlert(t *testing.T, name string, want bool) []map[string]string {
	t.Helper()
	expr := alertExpr(t, name)
	var series []map[string]string
	waitFor(t, 15*time.Second, fmt.Sprintf("alert %s condition %v in Prometheus", name, want), func() bool {
		var err error
		series, err = r.prom.series(expr)
		if err != nil {
			t.Fatalf("alert %s: %v", name, err)
		}
		return (len(series) > 0) == want
	})
	if want {
		r.fired[name] = true
	}
	return series
}

// checkWithPrometheus has a real Prometheus scrape the live endpoint (job
// "localdns", as scrape.yaml names it) and evaluates the dashboard's queries
// and the alerts' expressions: every panel shows data, and no alert fires on
// this healthy node.
func (r *rig) checkWithPrometheus(t *testing.T) {
	p := r.prom
	if p == nil {
		t.Skip("prometheus not installed (Debian package prometheus)")
	}
	// Some traffic while Prometheus scrapes, so rates are not all zero.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &dns.Client{Net: "udp", Timeout: time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			m := new(dns.Msg)
			m.SetQuestion("ext-1.example.com.", dns.TypeA)
			if i%10 == 0 {
				m.SetQuestion(fmt.Sprintf("load-%d.example.com.", i), dns.TypeA)
			}
			c.Exchange(m, r.node)
		}
	}()
	defer func() { close(stop); <-done }()
	waitFor(t, 20*time.Second, "4 scrapes of localdns by Prometheus", func() bool {
		n, err := p.query(`count_over_time(up{job="localdns"}[1m]) >= 4`)
		return err == nil && n == 1
	})
	if n, err := p.query(`up{job="localdns"} == 1`); err != nil || n != 1 {
		t.Fatalf("Prometheus does not see localdns up: %d series, %v", n, err)
	}

	vars := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*")
	d := loadDashboard(t)
	for _, pn := range d.panels() {
		if pn.Type == "row" {
			continue
		}
		shown := 0
		for _, tg := range pn.Targets {
			n, err := p.query(vars.Replace(tg.Expr))
			if err != nil {
				t.Errorf("panel %q: query %s: %v", pn.Title, tg.Expr, err)
			}
			if n == 0 {
				t.Logf("panel %q: query %s: no data now", pn.Title, tg.RefID)
			}
			shown += n
		}
		if shown == 0 {
			t.Errorf("panel %q shows no data from a live localdns", pn.Title)
		}
	}
	for _, a := range loadAlerts(t) {
		n, err := p.query(a.Expr)
		switch {
		case err != nil:
			t.Errorf("alert %s: %v", a.Alert, err)
		case n != 0 && (r.fired[a.Alert] || outageAlerts[a.Alert]):
			t.Logf("alert %s still holds: its window still covers the outage", a.Alert)
		case n != 0:
			t.Errorf("alert %s would fire on a healthy node (%d series)", a.Alert, n)
		}
	}
}

// outageAlerts are the alerts the test's upstream outage may set off: their
// rate windows still cover the outage on the "healthy" node afterwards, so
// whether the test caught them firing during it is a matter of timing.
var outageAlerts = map[string]bool{
	"LocalDNSUpstreamGroupDown": true,
	"LocalDNSUpstreamDown":      true,
	"LocalDNSServingStale":      true,
	"LocalDNSStaleAnswersHigh":  true,
}
