package observability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"
)

var (
	alertsPath    = filepath.Join(repoRoot, "deploy/prometheus/alerts.yaml")
	alertsTest    = filepath.Join(repoRoot, "deploy/prometheus/alerts_test.yaml")
	scrapePath    = filepath.Join(repoRoot, "deploy/prometheus/scrape.yaml")
	dashboardPath = filepath.Join(repoRoot, "deploy/grafana/localdns.json")
)

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadAlerts(t *testing.T) []rule {
	t.Helper()
	data, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no rules", alertsPath)
	}
	return rules
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Datasource  *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// panels returns every panel, those inside collapsed rows too.
func (d dashboard) panels() []panel {
	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return all
}

// grafanaVars replaces the dashboard's variables with values Prometheus
// accepts, so the expressions can be checked as PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$instance", ".*", "${instance}", ".*")

// exprs are the PromQL expressions of the dashboard: panel targets, with
// Grafana's variables substituted.
func (d dashboard) exprs() []string {
	var out []string
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			out = append(out, grafanaVars.Replace(tg.Expr))
		}
	}
	return out
}

var (
	stringLiteral = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	// Label names: in matchers ({...}) and in by/without/on/ignoring/group_x (...).
	labelLists = regexp.MustCompile(`\{[^{}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	metricName = regexp.MustCompile(`\b(?:localdns|coredns|process|go)_[a-zA-Z0-9_]*`)
)

// metricNames returns the metric names in text: PromQL (label values and
// label names removed) or prose that names metrics.
func metricNames(text string, promql bool) []string {
	if promql {
		text = stringLiteral.ReplaceAllString(text, `""`)
		text = labelLists.ReplaceAllString(text, " ")
	}
	return metricName.FindAllString(text, -1)
}

// exported reports whether the scrape has name: a family, or a histogram's
// or summary's _bucket, _sum or _count series.
func (s scrape) exported(name string) bool {
	if f := s.families[name]; f != nil && len(f.GetMetric()) > 0 {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f := s.families[base]; f != nil && len(f.GetMetric()) > 0 {
			t := f.GetType()
			if t == dto.MetricType_HISTOGRAM || t == dto.MetricType_SUMMARY && suffix != "_bucket" {
				return true
			}
		}
	}
	return false
}

// checkArtifactMetrics: every metric the alerts and the dashboard use, in
// expressions and in the text they show the operator, is on the endpoint.
func checkArtifactMetrics(t *testing.T, s scrape) {
	refs := map[string][]string{} // metric -> where
	add := func(where, text string, promql bool) {
		for _, n := range metricNames(text, promql) {
			if !slices.Contains(refs[n], where) {
				refs[n] = append(refs[n], where)
			}
		}
	}
	for _, r := range loadAlerts(t) {
		add("alert "+r.Alert, r.Expr, true)
		for _, a := range r.Annotations {
			add("alert "+r.Alert+" annotation", a, false)
		}
	}
	d := loadDashboard(t)
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			add("panel "+p.Title, tg.Expr, true)
		}
		add("panel "+p.Title+" description", p.Description, false)
	}
	for _, v := range d.Templating.List {
		add("variable "+v.Name, v.Definition, true)
	}
	if len(refs) < 20 {
		t.Fatalf("found only %d metric names in the alerts and dashboard; is the parsing broken?", len(refs))
	}
	var names []string
	for n := range refs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if !s.exported(n) {
			t.Errorf("%s is not exported by localdns; used by %s", n, strings.Join(refs[n], ", "))
		}
	}
	t.Logf("%d metric names used by alerts.yaml and localdns.json, all exported", len(names))
}

// checkServerLabels: the server label of our per-listener metrics names the
// listener ("dns://ip:port", as CoreDNS's own metrics do), so that the
// dashboard can put localdns_* and coredns_* of a listener side by side.
func checkServerLabels(t *testing.T, s scrape, r *rig) {
	want := []string{r.nodeServer(), r.podsServer()}
	for name, f := range s.families {
		if !strings.HasPrefix(name, "localdns_") && !strings.HasPrefix(name, "coredns_dns_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "server" && !slices.Contains(want, l.GetValue()) {
					t.Errorf("%s has a series with server=%q (value %v); the listeners are %q", name, l.GetValue(), m.GetCounter().GetValue(), want)
				}
			}
		}
	}
}

// lintScrape runs client_golang's promlint over the scrape. Problems in our
// metrics fail the test; problems in CoreDNS's and the Go collectors' are
// logged: they are not ours to rename.
func lintScrape(t *testing.T, s scrape) {
	ours, theirs, err := lint(s.text)
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range ours {
		t.Errorf("promlint: %s", p)
	}
	for _, p := range theirs {
		t.Logf("promlint (not ours): %s", p)
	}
	t.Logf("promlint: %d problems in localdns_* metrics, %d in others'", len(ours), len(theirs))
}

// lint runs promlint over exposition text and splits the problems into
// those of localdns_* metrics and the rest.
func lint(text string) (ours, theirs []string, err error) {
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	for _, p := range problems {
		line := p.Metric + ": " + p.Text
		if strings.HasPrefix(p.Metric, "localdns_") {
			ours = append(ours, line)
		} else {
			theirs = append(theirs, line)
		}
	}
	return ours, theirs, err
}

// TestLintCatches shows that the lint above fails on the mistakes it is
// there for, and only for our metrics.
func TestLintCatches(t *testing.T) {
	text := `# HELP localdns_cache_hits A counter without _total.
# TYPE localdns_cache_hits counter
localdns_cache_hits 1
# HELP localdns_upstream_latency_milliseconds Not in base units.
# TYPE localdns_upstream_latency_milliseconds gauge
localdns_upstream_latency_milliseconds 3
# HELP coredns_thing_count Not ours.
# TYPE coredns_thing_count counter
coredns_thing_count 1
`
	ours, theirs, err := lint(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(ours) != 2 || len(theirs) != 2 {
		t.Errorf("lint found %q in ours and %q in theirs; want 2 and 2", ours, theirs)
	}
}

// promtool returns promtool's path, or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus)")
	}
	return path
}

func runPromtool(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// promtoolCheckMetrics runs `promtool check metrics` over the scrape; like
// lintScrape it fails only on our metrics.
func promtoolCheckMetrics(t *testing.T, s scrape) {
	out, err := runPromtool(t, s.text, "check", "metrics")
	if err == nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "localdns_") {
			t.Errorf("promtool check metrics: %s", line)
		} else {
			t.Logf("promtool check metrics (not ours): %s", line)
		}
	}
}

// TestAlertRules checks deploy/prometheus/alerts.yaml: every alert tells the
// operator how bad it is and what to do, promtool accepts the file, and the
// unit tests in alerts_test.yaml (each alert fires when it should, with the
// text the operator reads, and not on a healthy node) pass.
func TestAlertRules(t *testing.T) {
	rules := loadAlerts(t)
	seen := map[string]bool{}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
			t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, s)
		}
		if len(r.Annotations["summary"]) < 20 || len(r.Annotations["description"]) < 80 {
			t.Errorf("alert %s: summary and description must say what is wrong and what to do", r.Alert)
		}
		if !strings.Contains(r.Annotations["summary"]+r.Annotations["description"], "{{ $labels.instance }}") && r.Alert != "LocalDNSMetricsAbsent" {
			t.Errorf("alert %s does not name the node ({{ $labels.instance }})", r.Alert)
		}
	}
	// What the issue asks the alerts to cover, by the metric each must use.
	for _, m := range []string{"up", "localdns_upstream_healthy", "localdns_cache_hits_total", "localdns_cache_stale_answers_total",
		"localdns_reconcile_repairs_total", "localdns_setup_errors_total", "localdns_watchdog_probe_failures_total"} {
		found := false
		for _, r := range rules {
			if regexp.MustCompile(`\b` + m + `\b`).MatchString(r.Expr) {
				found = true
			}
		}
		if !found {
			t.Errorf("no alert uses %s", m)
		}
	}

	if out, err := runPromtool(t, "", "check", "rules", alertsPath); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	out, err := runPromtool(t, "", "test", "rules", alertsTest)
	if err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
	// Every alert has a unit test.
	data, err := os.ReadFile(alertsTest)
	if err != nil {
		t.Fatal(err)
	}
	for name := range seen {
		if !regexp.MustCompile(`alertname: ` + name + `\n(?:\s+exp_alerts:)`).Match(data) {
			t.Errorf("alert %s has no firing test in %s", name, alertsTest)
		}
	}
}

// TestDashboard checks deploy/grafana/localdns.json: a dashboard Grafana can
// import (unique panel ids, a data source variable every panel uses, panels
// laid out on the 24-column grid), with a description on every panel, and
// expressions that are valid PromQL (promtool checks them as recording
// rules).
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard needs a title and a uid (got %q, %q)", d.Title, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["instance"] != "query" {
		t.Errorf("dashboard variables %v, want datasource (datasource) and instance (query)", vars)
	}
	ids := map[int]string{}
	nTargets := 0
	for _, p := range d.panels() {
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d not unique (also %q)", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			nTargets++
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: query %q with refId %q (empty or repeated)", p.Title, tg.Expr, tg.RefID)
			}
			refs[tg.RefID] = true
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q: query %q ignores the instance variable", p.Title, tg.Expr)
			}
		}
		if strings.Contains(p.Title, "Latency") && !strings.Contains(p.Description, "NOT in this histogram") {
			t.Errorf("latency panel %q must say that fast-path hits are not in CoreDNS's histogram", p.Title)
		}
	}
	// The panels the issue asks for, by the metric each must show.
	all := strings.Join(d.exprs(), "\n")
	for _, m := range []string{"coredns_dns_requests_total", "localdns_fastpath_answers_total", "coredns_dns_request_duration_seconds_bucket",
		"localdns_cache_hits_total", "localdns_cache_stale_answers_total", "localdns_upstream_healthy",
		"localdns_upstream_request_duration_seconds_bucket", "process_resident_memory_bytes", "localdns_cache_size_bytes",
		"localdns_cache_budget_bytes", "localdns_junk_answers_total", "localdns_cache_snapshot_timestamp_seconds"} {
		if !strings.Contains(all, m) {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}

	// PromQL syntax: every expression as a recording rule, through promtool.
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range d.exprs() {
		q, _ := json.Marshal(e) // a JSON string is a YAML double-quoted scalar
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runPromtool(t, "", "check", "rules", path)
	if err != nil {
		t.Errorf("dashboard queries are not valid PromQL: %v\n%s", err, out)
	}
	t.Logf("%d panels, %d queries; promtool: %s", len(ids), nTargets, strings.TrimSpace(out))
}

// TestScrapeConfig checks deploy/prometheus/scrape.yaml: both jobs end up as
// job="localdns" (the alerts and dashboard select on it), the Kubernetes
// variant scrapes the node's InternalIP on 9253, and promtool accepts it.
func TestScrapeConfig(t *testing.T) {
	data, err := os.ReadFile(scrapePath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RuleFiles     []string         `yaml:"rule_files"`
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%s: %v", scrapePath, err)
	}
	if !slices.Contains(cfg.RuleFiles, "alerts.yaml") {
		t.Errorf("rule_files %q does not load alerts.yaml", cfg.RuleFiles)
	}
	var static, k8s bool
	for _, sc := range cfg.ScrapeConfigs {
		relabel, _ := yaml.Marshal(sc["relabel_configs"])
		job := sc["job_name"] == "localdns"
		rcs, _ := sc["relabel_configs"].([]any)
		for _, rc := range rcs {
			m, _ := rc.(map[string]any)
			if m["target_label"] == "job" && m["replacement"] == "localdns" {
				job = true
			}
		}
		if !job {
			t.Errorf("scrape job %v does not produce job=\"localdns\"", sc["job_name"])
		}
		if _, ok := sc["static_configs"]; ok {
			static = true
			targets, _ := yaml.Marshal(sc["static_configs"])
			if !strings.Contains(string(targets), ":9253") {
				t.Errorf("static targets lack the metrics port 9253:\n%s", targets)
			}
		}
		if sd, ok := sc["kubernetes_sd_configs"]; ok {
			k8s = true
			role, _ := yaml.Marshal(sd)
			if !strings.Contains(string(role), "role: node") {
				t.Errorf("kubernetes_sd_configs is not role node:\n%s", role)
			}
			if !strings.Contains(string(relabel), "__meta_kubernetes_node_address_InternalIP") || !strings.Contains(string(relabel), "replacement: $1:9253") {
				t.Errorf("kubernetes job does not relabel __address__ to InternalIP:9253:\n%s", relabel)
			}
		}
	}
	if !static || !k8s {
		t.Errorf("want a static job and a kubernetes_sd node job (static %v, kubernetes %v)", static, k8s)
	}

	out, err := runPromtool(t, "", "check", "config", scrapePath)
	if err != nil && strings.Contains(out, "field kubernetes_sd_configs not found") {
		// Debian builds Prometheus without Kubernetes discovery: check the
		// rest of the file, without the kubernetes jobs.
		t.Logf("this promtool has no Kubernetes discovery (Debian build); checking the static job only")
		var full map[string]any
		if err := yaml.Unmarshal(data, &full); err != nil {
			t.Fatal(err)
		}
		var keep []any
		for _, sc := range full["scrape_configs"].([]any) {
			if _, k8s := sc.(map[string]any)["kubernetes_sd_configs"]; !k8s {
				keep = append(keep, sc)
			}
		}
		full["scrape_configs"] = keep
		dir := t.TempDir()
		text, _ := yaml.Marshal(full)
		rules, _ := os.ReadFile(alertsPath)
		os.WriteFile(filepath.Join(dir, "scrape.yaml"), text, 0o644)
		os.WriteFile(filepath.Join(dir, "alerts.yaml"), rules, 0o644)
		out, err = runPromtool(t, "", "check", "config", filepath.Join(dir, "scrape.yaml"))
	}
	if err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		text   string
		promql bool
		want   []string
	}{
		{`sum by (instance, coredns_version) (rate(coredns_dns_requests_total{server="dns://x", go_x="localdns_y"}[5m]))`, true, []string{"coredns_dns_requests_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(localdns_upstream_request_duration_seconds_bucket[5m]))) > on (instance) group_left(process_x) process_start_time_seconds`, true,
			[]string{"localdns_upstream_request_duration_seconds_bucket", "process_start_time_seconds"}},
		{`see localdns_cache_size_bytes at localdns_cache_budget_bytes, in localdns.slice`, false, []string{"localdns_cache_size_bytes", "localdns_cache_budget_bytes"}},
	} {
		if got := metricNames(c.text, c.promql); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.text, got, c.want)
		}
	}
}
