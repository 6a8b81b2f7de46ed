package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/localdns/localdns/internal/netsetup"
	"github.com/localdns/localdns/internal/sdnotify"
	"github.com/localdns/localdns/plugin/clientbudget"
)

// Report is what `localdns status` shows and /status serves: one snapshot of
// whether this node's DNS is healthy, built from live probes, the metrics
// every component already exports, and the network state in the kernel.
type Report struct {
	Time      time.Time        `json:"time"`
	Source    string           `json:"source"`
	Mode      string           `json:"mode,omitempty"`
	Uptime    Duration         `json:"uptime"`
	Ready     bool             `json:"ready"`
	NotReady  []string         `json:"notReady,omitempty"`
	Listeners []ListenerReport `json:"listeners"`
	Upstreams []UpstreamReport `json:"upstreams,omitempty"`
	Queries   float64          `json:"queriesTotal"` // every query answered, all listeners
	Cache     CacheReport      `json:"cache"`
	Network   *NetworkReport   `json:"network,omitempty"`
	// Top is who asked what over the last minute (`localdns top`).
	Top *clientbudget.Top `json:"top,omitempty"`
}

// ListenerReport is one listener's probe result.
type ListenerReport struct {
	Addr    string   `json:"addr"`
	Network string   `json:"network"`
	OK      bool     `json:"ok"`
	Latency Duration `json:"latency"`
	Error   string   `json:"error,omitempty"`
}

// UpstreamReport is one upstream's health as the upstream plugin sees it.
type UpstreamReport struct {
	Group    string `json:"group"`
	Upstream string `json:"upstream"`
	Healthy  bool   `json:"healthy"`
}

// CacheReport sums the cache's counters over every server block.
type CacheReport struct {
	Entries          float64 `json:"entries"`
	Bytes            float64 `json:"bytes"`
	Budget           float64 `json:"budgetBytes"`
	Hits             float64 `json:"hits"`
	Misses           float64 `json:"misses"`
	Stale            float64 `json:"staleAnswers"`
	Evictions        float64 `json:"evictions"`
	SnapshotSaved    float64 `json:"snapshotSavedEntries"`
	SnapshotRestored float64 `json:"snapshotRestoredEntries"`
	SnapshotTime     float64 `json:"snapshotTimestampSeconds"`
}

// NetworkReport is what netsetup found in the kernel.
type NetworkReport struct {
	Link        string   `json:"link"`
	Fallback    bool     `json:"fallbackToLo"`
	Addresses   []string `json:"addressesPresent"`
	Missing     []string `json:"addressesMissing,omitempty"`
	RulesIntact bool     `json:"rulesIntact"`
	Rules       int      `json:"rules"`
	WantRules   int      `json:"wantRules"`
	Error       string   `json:"error,omitempty"`
}

// Duration marshals as a Go duration string.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// TopN is how many clients and names Report.Top lists of each.
const TopN = 20

// Status builds a Report: it probes every listener now.
func (d *Daemon) Status(ctx context.Context) Report {
	r := Report{Time: time.Now(), Source: d.source.Description, Uptime: Duration(time.Since(d.started).Round(time.Second))}
	if p := d.source.Profile; p != nil {
		r.Mode = string(p.Mode)
	}
	r.Listeners = ProbeListeners(ctx, d.Listeners())
	fillFromMetrics(&r, prometheus.DefaultGatherer)
	if d.manage {
		r.Network = networkReport(d.net)
	}
	r.Ready, r.NotReady = readiness(r)
	top := clientbudget.Shared().Top(TopN)
	r.Top = &top
	return r
}

// ProbeListeners queries the probe zone on every address over UDP and TCP,
// concurrently, each with a one-second timeout.
func ProbeListeners(ctx context.Context, addrs []netip.AddrPort) []ListenerReport {
	out := make([]ListenerReport, 2*len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		for j, network := range []string{"udp", "tcp"} {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				start := time.Now()
				err := sdnotify.Probe(pctx, a, network)
				lr := ListenerReport{Addr: a.String(), Network: network, OK: err == nil, Latency: Duration(time.Since(start).Round(time.Microsecond))}
				if err != nil {
					lr.Error = err.Error()
				}
				out[2*i+j] = lr
			})
		}
	}
	wg.Wait()
	return out
}

// readiness: every listener answers, and every upstream group has a healthy
// upstream (a group with none cannot answer its names except from cache).
func readiness(r Report) (bool, []string) {
	var not []string
	for _, l := range r.Listeners {
		if !l.OK {
			not = append(not, fmt.Sprintf("listener %s/%s: %s", l.Addr, l.Network, l.Error))
		}
	}
	groups := map[string]bool{}
	for _, u := range r.Upstreams {
		groups[u.Group] = groups[u.Group] || u.Healthy
	}
	for _, g := range slices.Sorted(maps.Keys(groups)) {
		if !groups[g] {
			not = append(not, fmt.Sprintf("upstream group %s: no healthy upstream", g))
		}
	}
	return len(not) == 0, not
}

// fillFromMetrics reads the counters the plugins export: the metrics are
// their status API, so status shows exactly what Prometheus would.
func fillFromMetrics(r *Report, g prometheus.Gatherer) {
	families, err := g.Gather()
	if err != nil && len(families) == 0 {
		return
	}
	sum := func(name string) float64 {
		var total float64
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, m := range f.GetMetric() {
				total += metricValue(m)
			}
		}
		return total
	}
	r.Queries = sum("coredns_dns_requests_total") + sum("localdns_fastpath_answers_total")
	c := &r.Cache
	c.Entries, c.Bytes, c.Budget = sum("localdns_cache_entries"), sum("localdns_cache_size_bytes"), sum("localdns_cache_budget_bytes")
	c.Hits, c.Misses, c.Stale = sum("localdns_cache_hits_total"), sum("localdns_cache_misses_total"), sum("localdns_cache_stale_answers_total")
	c.Evictions = sum("localdns_cache_evictions_total")
	c.SnapshotSaved, c.SnapshotRestored, c.SnapshotTime = sum("localdns_cache_snapshot_saved_entries"), sum("localdns_cache_snapshot_restored_entries"), sum("localdns_cache_snapshot_timestamp_seconds")
	seen := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "localdns_upstream_healthy" {
			continue
		}
		for _, m := range f.GetMetric() {
			u := UpstreamReport{Healthy: metricValue(m) > 0}
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "group":
					u.Group = l.GetValue()
				case "upstream":
					u.Upstream = l.GetValue()
				}
			}
			key := u.Group + "/" + u.Upstream
			if !seen[key] {
				seen[key] = true
				r.Upstreams = append(r.Upstreams, u)
			}
		}
	}
	sort.Slice(r.Upstreams, func(i, j int) bool {
		a, b := r.Upstreams[i], r.Upstreams[j]
		return a.Group < b.Group || a.Group == b.Group && a.Upstream < b.Upstream
	})
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func networkReport(cfg netsetup.Config) *NetworkReport {
	st, err := netsetup.Status(cfg)
	nr := &NetworkReport{}
	if err != nil {
		nr.Error = err.Error()
		return nr
	}
	nr.Link, nr.Fallback, nr.RulesIntact, nr.Rules, nr.WantRules = st.Link, st.Fallback, st.RulesIntact, st.Rules, st.WantRules
	for _, a := range st.Addrs {
		if a.Present {
			nr.Addresses = append(nr.Addresses, a.Addr.String())
		} else {
			nr.Missing = append(nr.Missing, a.Addr.String())
		}
	}
	return nr
}

// serveHealth serves /health, /ready and /status on addr until ctx ends.
//
//	/health  200 while the process runs and is not shutting down
//	/ready   200 when every listener answers a probe and every upstream
//	         group has a healthy upstream; 503 with the reasons otherwise
//	/status  the Report as JSON
func (d *Daemon) serveHealth(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		if d.stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, req *http.Request) {
		if d.stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		r := d.Status(req.Context())
		if !r.Ready {
			http.Error(w, strings.Join(r.NotReady, "\n"), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.Status(req.Context()))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go srv.Serve(ln)
	return nil
}
