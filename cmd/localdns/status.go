package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/daemon"
	"github.com/localdns/localdns/internal/netsetup"
)

// statusView is what `localdns status` prints: the daemon's report plus the
// query rate measured over the interval between two reports.
type statusView struct {
	daemon.Report
	QPS      float64 `json:"qps"`
	HitRatio float64 `json:"hitRatio"` // hits / (hits + misses) since start
}

func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", "[--config FILE] [--json]", strings.TrimSpace(`
Print whether this node's DNS is healthy: each listener and whether it answers,
queries per second, cache hit ratio and stale answers, upstream health, the
cache snapshot's age, and whether the listener addresses and the conntrack
bypass are in place. It asks the daemon's health endpoint (the profile's
"health" address) twice, --interval apart, to measure the query rate.
Exit 0 when ready, 1 when not, 3 when the daemon does not answer.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: the node profile, or the laptop profile)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	interval := fs.Duration("interval", time.Second, "time between the two reports the rate is measured over")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	p, _, err := profileFor(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "localdns status: %v\n", err)
		return daemon.ExitConfig
	}
	if p.Health == "" {
		fmt.Fprintln(stderr, "localdns status: the profile sets no health address")
		return daemon.ExitConfig
	}
	url := "http://" + p.Health + "/status"
	first, err := fetchReport(url)
	if err != nil {
		fmt.Fprintf(stderr, "localdns status: daemon not answering on %s: %v\n", p.Health, err)
		if p.Network.Manage {
			printListenersFromKernel(stdout, p, *asJSON)
		}
		return 3
	}
	time.Sleep(*interval)
	second, err := fetchReport(url)
	if err != nil {
		fmt.Fprintf(stderr, "localdns status: daemon stopped answering on %s: %v\n", p.Health, err)
		return 3
	}
	v := statusView{Report: second}
	if dt := second.Time.Sub(first.Time).Seconds(); dt > 0 {
		// The first report's own probes count as queries; leave them out.
		probes := float64(len(first.Listeners))
		v.QPS = max(0, second.Queries-first.Queries-probes) / dt
	}
	if total := second.Cache.Hits + second.Cache.Misses; total > 0 {
		v.HitRatio = second.Cache.Hits / total
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(v)
	} else {
		printStatus(stdout, v)
	}
	if !v.Ready {
		return 1
	}
	return 0
}

func fetchReport(url string) (daemon.Report, error) {
	var r daemon.Report
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func printStatus(w io.Writer, v statusView) {
	state := "READY"
	if !v.Ready {
		state = "NOT READY"
	}
	fmt.Fprintf(w, "localdns %s — %s, mode %s, up %s\n", state, v.Source, orDash(v.Mode), time.Duration(v.Uptime))
	for _, reason := range v.NotReady {
		fmt.Fprintf(w, "  ! %s\n", reason)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nLISTENER\tPROTO\tANSWERS\tLATENCY")
	for _, l := range v.Listeners {
		ans := "yes"
		if !l.OK {
			ans = "NO: " + l.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Addr, l.Network, ans, time.Duration(l.Latency))
	}
	tw.Flush()
	c := v.Cache
	fmt.Fprintf(w, "\nTraffic   %.0f queries/s, cache hit ratio %.1f%%, %.0f stale answers served\n", v.QPS, 100*v.HitRatio, c.Stale)
	fmt.Fprintf(w, "Cache     %.0f entries, %s of %s, %.0f evictions\n", c.Entries, bytesText(c.Bytes), bytesText(c.Budget), c.Evictions)
	if c.SnapshotTime > 0 {
		age := v.Time.Sub(time.Unix(int64(c.SnapshotTime), 0)).Round(time.Second)
		fmt.Fprintf(w, "Snapshot  saved %s ago (%.0f entries); %.0f restored at start\n", age, c.SnapshotSaved, c.SnapshotRestored)
	} else {
		fmt.Fprintf(w, "Snapshot  none saved yet; %.0f entries restored at start\n", c.SnapshotRestored)
	}
	if len(v.Upstreams) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nUPSTREAM\tGROUP\tHEALTHY")
		for _, u := range v.Upstreams {
			h := "yes"
			if !u.Healthy {
				h = "NO"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Upstream, u.Group, h)
		}
		tw.Flush()
	}
	if n := v.Network; n != nil {
		fmt.Fprintln(w)
		if n.Error != "" {
			fmt.Fprintf(w, "Network   could not read: %s\n", n.Error)
			return
		}
		link := n.Link
		if n.Fallback {
			link += " (no dummy link type in this kernel)"
		}
		fmt.Fprintf(w, "Network   addresses on %s: %s", link, strings.Join(n.Addresses, ", "))
		if len(n.Missing) > 0 {
			fmt.Fprintf(w, "; MISSING: %s", strings.Join(n.Missing, ", "))
		}
		rules := "in place"
		if !n.RulesIntact {
			rules = "NOT in place"
		}
		fmt.Fprintf(w, "\n          conntrack bypass %s (%d of %d rules)\n", rules, n.Rules, n.WantRules)
	} else {
		fmt.Fprintln(w, "\nNetwork   not managed (network.manage: false)")
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesText(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// listenerState is a listener's state read from the kernel, for when the
// daemon does not answer.
type listenerState struct {
	Listener  string    `json:"listener"`
	State     string    `json:"state"` // "fallback", "bypass (localdns starting or restarting)", "nothing"
	Since     time.Time `json:"since,omitempty"`
	Upstreams []string  `json:"upstreams,omitempty"`
	Queries   uint64    `json:"fallbackQueries"`
}

// printListenersFromKernel says, from the nftables rules alone, where
// queries to each listener go while the daemon does not answer.
func printListenersFromKernel(w io.Writer, p *config.Profile, asJSON bool) {
	cfg := daemon.NetworkConfig(p, nil)
	fb, err := netsetup.Fallback(cfg)
	if err != nil {
		fmt.Fprintf(w, "could not read the kernel's rules: %v\n", err)
		return
	}
	st, _ := netsetup.Status(cfg)
	var states []listenerState
	for _, a := range cfg.Addrs {
		ls := listenerState{Listener: a.String(), State: "nothing"}
		switch {
		case len(fb.Upstreams[a]) > 0:
			ls.State, ls.Since, ls.Queries = "fallback", fb.Since, fb.Packets[a]
			for _, u := range fb.Upstreams[a] {
				ls.Upstreams = append(ls.Upstreams, u.String())
			}
		case st.Rules > 0:
			ls.State = "bypass (localdns starting or restarting: the socket queues queries)"
		}
		states = append(states, ls)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{"daemon": "not answering", "listeners": states})
		return
	}
	fmt.Fprintln(w, "localdns NOT ANSWERING — where queries to the listeners go (from the kernel's rules):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tSTATE")
	for _, ls := range states {
		switch ls.State {
		case "fallback":
			fmt.Fprintf(tw, "%s\tfallback since %s (%s): straight to %s, %d queries\n", ls.Listener,
				ls.Since.Local().Format(time.RFC3339), time.Since(ls.Since).Round(time.Second), strings.Join(ls.Upstreams, ", "), ls.Queries)
		case "nothing":
			fmt.Fprintf(tw, "%s\tNOTHING ANSWERS: no localdns, no fallback (run `localdns fallback`)\n", ls.Listener)
		default:
			fmt.Fprintf(tw, "%s\t%s\n", ls.Listener, ls.State)
		}
	}
	tw.Flush()
}
