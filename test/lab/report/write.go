package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Write writes results.json, the charts and REPORT.md into dir.
func Write(dir string, r *Results, bars []Bar) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(struct {
		*Results
		Bars []Bar
	}{r, bars}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), data, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	var charts []string
	for _, c := range Classes {
		f, err := latencyChart(dir, r, c)
		if err != nil {
			return err
		}
		charts = append(charts, f)
	}
	for _, mk := range []func(string, *Results) (string, error){shareChart, loadChart} {
		f, err := mk(dir, r)
		if err != nil {
			return err
		}
		charts = append(charts, f)
	}
	md := Markdown(r, bars, charts)
	if err := os.WriteFile(filepath.Join(dir, "REPORT.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Markdown renders the report.
func Markdown(r *Results, bars []Bar, charts []string) string {
	var b strings.Builder
	s := r.Settings
	verdict := "PASS: every bar met"
	if !Passed(bars) {
		verdict = "FAIL: at least one bar missed"
	} else if s.LatencyAdvisory {
		verdict = "PASS: every enforced bar met (the latency bars were advisory in this run: -enforce-latency=false)"
	}
	fmt.Fprintf(&b, "# localdns lab: centralized CoreDNS vs localdns (%s variant)\n\n", s.Variant)
	fmt.Fprintf(&b, "**%s.** Run %s, took %v, on %s; the machine was %.0f%% busy with other work just before the lab started.\n\n",
		verdict, s.Started.Format("2006-01-02 15:04 UTC"), s.Took, s.Machine, 100*s.BusyBefore)
	b.WriteString("Reproduces the seed experiment (reference/seed-localdns-blog.md) on one machine in network\n" +
		"namespaces: pods at 10k QPS against central CoreDNS pods behind a kube-proxy service address\n" +
		"(scenario A) and against localdns on their node (scenario B). Regenerate with `make lab`\n" +
		"(this report's variant: `make lab" + map[bool]string{true: "-short", false: ""}[s.Variant == "short"] + "`).\n\n")

	b.WriteString("## Bars\n\n| bar | wanted | got | |\n|---|---|---|---|\n")
	for _, bar := range bars {
		st := "pass"
		switch {
		case !bar.Pass && bar.Advisory:
			st = "missed (advisory)"
		case !bar.Pass:
			st = "**FAIL**"
		case bar.Advisory:
			st = "pass (advisory)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", bar.Name, bar.Want, bar.Got, st)
	}

	b.WriteString("\n## Latency (cache-hit traffic after a warm-up)\n\n")
	b.WriteString("Per-query times from dnsperf's verbose output, percentiles by nearest rank over every query sent (both pods together); a query without an answer within dnsperf's timeout counts as taking the timeout.\n\n")
	b.WriteString("| names | scenario | p50 | p95 | p99 | p99.9 | max | success | queries | achieved QPS | machine CPU busy / load | CPU busy: load side / servers | CPU: CoreDNS / localdns / emulation / dnsperf |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range Classes {
		for _, sc := range r.scenarios(c) {
			p := sc.p
			split := "not pinned"
			if s.Pinned {
				split = fmt.Sprintf("%.0f%% / %.0f%%", 100*p.LoadCPUBusy, 100*p.ServerCPUBusy)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %.3f%% | %d | %.0f | %.0f%% / %.1f | %s | %.0f%% / %.0f%% / %.0f%% / %.0f%% |\n", c, sc.name,
				fmtDur(p.P50), fmtDur(p.P95), fmtDur(p.P99), fmtDur(p.P999), fmtDur(p.Max), 100*p.SuccessRate(), p.Sent, p.QPS(), 100*p.MachineBusy, p.LoadAvg, split,
				pct(p.CoreDNSCPU, p.Elapsed), pct(p.LocalDNSCPU, p.Elapsed), pct(p.EmulationCPU, p.Elapsed), pct(p.ClientCPU, p.Elapsed))
		}
	}
	b.WriteString("\n\"Machine CPU busy\" is the whole machine (possibly shared with other work): how busy its CPUs were during the phase, the lab included, and the 1-minute load average at its end. " +
		"\"CPU busy: load side / servers\" is each of the two pinned CPUs (see How it was measured): a load side near 100% would make the client, not the resolver, the bottleneck. " +
		"The last column is in percent of one core: both CoreDNS pods, localdns, the emulation (delay proxies and external resolver) and both dnsperf processes (their -v per-query output included).\n\n")
	if s.Pinned {
		var hot []string
		for _, c := range Classes {
			for _, sc := range r.scenarios(c) {
				if sc.p.LoadCPUBusy >= 0.9 {
					hot = append(hot, fmt.Sprintf("%s %s (%.0f%%)", c, sc.name, 100*sc.p.LoadCPUBusy))
				}
			}
		}
		if len(hot) > 0 {
			fmt.Fprintf(&b, "> **Caveat:** the load side's CPU was at least 90%% busy in %s: there the client (dnsperf, the emulation) queued too, and that phase's tail includes its queueing, not only the resolver's.\n\n", strings.Join(hot, ", "))
		}
	}
	if len(r.Rounds) > 0 {
		writeRounds(&b, r)
	}
	for _, c := range charts {
		fmt.Fprintf(&b, "![%s](%s)\n\n", strings.TrimSuffix(c, ".png"), c)
	}

	b.WriteString("## Load on the upstreams and spread over the CoreDNS pods\n\n")
	central, local := r.backendShares()
	b.WriteString("| scenario | queries to CoreDNS | per second | " + strings.Join(r.Backends, " | ") + " | queries to external | per second |\n")
	b.WriteString("|---|---|---|" + strings.Repeat("---|", len(r.Backends)) + "---|---|\n")
	for _, sc := range []struct {
		name   string
		phases map[string]Phase
		share  []float64
	}{{"centralized", r.Centralized, central}, {"localdns", r.LocalDNS, local}} {
		cr, er := r.upstreamRates(sc.phases)
		var ct, et float64
		for _, c := range Classes {
			ct += sc.phases[c].CoreDNSTotal()
			et += sc.phases[c].External
		}
		var shares []string
		for _, v := range sc.share {
			shares = append(shares, fmt.Sprintf("%.1f%%", 100*v))
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %.0f | %.0f |\n", sc.name, ct, cr, strings.Join(shares, " | "), et, er)
	}
	b.WriteString("\nCounts are the CoreDNS pods' own `coredns_dns_requests_total` and the external resolver's counter,\n" +
		"read before and after the measured phases. The localdns shares count everything localdns\n" +
		"forwarded (its warm-up included: " + fmt.Sprintf("%.0f", r.LocalDNSWarm.CoreDNSTotal()) + " queries), the centralized shares the measured phases.\n" +
		"Centralized, each dnsperf socket is one conntrack flow and stays on the backend the DNAT picked for it\n" +
		fmt.Sprintf("(%d pods x %d sockets = %d flows); localdns sends each forwarded query from a fresh socket.\n", s.Pods, s.ClientsPerPod, s.Pods*s.ClientsPerPod))
	fmt.Fprintf(&b, "Before the run, 40 fresh flows to the service address were answered by (NSID): %s.\n\n", fmtCounts(r.ServiceCheck))

	b.WriteString("## Faults (scenario B)\n\n")
	o := r.Outage
	fmt.Fprintf(&b, "**Upstreams down for %v** (every packet from the node to both CoreDNS pods and the external resolver dropped, "+
		"mid-run, after every name was seen in the warm-up): %d of %d queries answered with the expected rcode (%.3f%%), "+
		"%d timed out; localdns served %.0f stale answers; p99 %s, max %s; rcodes %s.\n\n",
		s.OutageDuration, o.Succeeded, o.Sent, 100*o.SuccessRate(), o.Lost, o.Stale, fmtDur(o.P99), fmtDur(o.Max), fmtCounts(o.Rcodes))
	rs := r.Restart
	how := fmt.Sprintf("with socket activation: the harness holds both listeners' UDP and TCP sockets as localdns.socket does (FreeBind, ReceiveBuffer=%dM as in the unit) and restarts localdns on them as systemd does (SIGTERM, wait for exit, start)", s.ReceiveBuffer>>20)
	if !s.SocketActivation {
		how = "**without socket activation** (" + s.ActivationNote + "): stop, then start, localdns binding its own sockets"
	}
	var gaps []string
	for _, g := range r.RestartGaps {
		gaps = append(gaps, g.String())
	}
	fmt.Fprintf(&b, "**localdns restarted %d times under load**, %s. Signal to answering again: %s. "+
		"%d of %d queries answered with the expected rcode, %d timed out; p99 %s, max %s; PIDs %v.\n\n",
		s.Restarts, how, strings.Join(gaps, ", "), rs.Succeeded, rs.Sent, rs.Lost, fmtDur(rs.P99), fmtDur(rs.Max), r.RestartPIDs)

	for _, n := range r.Notes {
		fmt.Fprintf(&b, "> **Note:** %s\n\n", n)
	}

	b.WriteString("## How it was measured\n\n")
	fmt.Fprintf(&b, "- Every process of the lab (servers, localdns, dnsperf) ran at nice %d, both scenarios alike, so that other work on the machine weighs less on the tails.\n", s.Nice)
	if s.NiceGroup != "" {
		fmt.Fprintf(&b, "- Scheduling: %s.\n", s.NiceGroup)
	}
	fmt.Fprintf(&b, "- CPUs: %s.\n", s.Pinning)
	fmt.Fprintf(&b, "- Load: dnsperf (%s), %d QPS in total from %d client pods (%d sockets each), %v per measured phase, %d rounds; cluster and external names in separate phases; "+
		"dnsperf's per-query output went to a file read after each phase, so the parsing did not take the load side's CPU during it.\n",
		s.DNSPerfVersion, s.QPS, s.Pods, s.ClientsPerPod, s.PhaseDuration, max(s.Rounds, 1))
	fmt.Fprintf(&b, "- Names: %d cluster and %d external names, popularity Zipf (s=%.1f), each lookup expanded through the pod's ndots:5 search path "+
		"(`svc7.ns3` -> `svc7.ns3.default.svc.cluster.local` NXDOMAIN, `svc7.ns3.svc.cluster.local`; `api12.example.com` -> three NXDOMAIN suffixes, then the name). A queries only.\n",
		s.ClusterNames, s.ExternalNames, s.ZipfS)
	fmt.Fprintf(&b, "- Order: warm-up of B (every name once through localdns), the outage and the restarts (B), then the latency rounds. "+
		"In each round, before a scenario's two phases, every name once more through its resolver (at the pods' rate, not measured), so that the phases are cache-hit traffic: what expired (TTL 30 s) since the last pass is fetched again before they start. "+
		"What a cache does when entries expire under load is measured in the outage and restart runs. localdns ran, idle, through the centralized phases.\n")
	fmt.Fprintf(&b, "- CoreDNS pods: stock CoreDNS (%s), `template` answers for services (TTL %d s as kubeadm's `ttl 30`), NXDOMAIN with SOA for the rest of cluster.local, `forward` to the external resolver, `cache 30`, NSID naming the pod.\n", s.CoreDNSVersion, s.ClusterTTL)
	fmt.Fprintf(&b, "- Service address: kube-proxy nft-mode rules in the node namespace, `numgen random mod 2` DNAT per new conntrack flow, for pods (prerouting) and the node itself (output).\n")
	fmt.Fprintf(&b, "- External resolver (\"Azure DNS\"): the lab's miekg/dns server, A answers with TTL %d s.\n", s.ExternalTTL)
	fmt.Fprintf(&b, "- **Emulated** (the kernel has no netem): the hop to a CoreDNS pod, %s; the external resolver's own latency, %s. Everything beyond these is real: CoreDNS's processing, conntrack/DNAT, veths, and the CPU each server gets (one CPU for the servers under test when pinned).\n", s.CoreDNSDelay, s.ExternalDelay)
	if s.CoreDNSHold != "" {
		fmt.Fprintf(&b, "- Measured hold of the emulation over the whole run (from a query's arrival to its release, so what the model actually added, timer precision and load included): hops to the CoreDNS pods, %s; external resolver, %s.\n", s.CoreDNSHold, s.ExternalHold)
	}
	fmt.Fprintf(&b, "- localdns: %s, the AKS default profile with the lab's service address and external resolver (`localdns.yaml` in the lab's scratch directory), managing the node namespace's network itself (listener addresses on lo, as the kernel has no dummy links; nftables conntrack bypass).\n", s.LocalDNSVersion)
	return b.String()
}

func fmtCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// pct is CPU seconds over a wall time, in percent of one core.
func pct(cpu float64, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return 100 * cpu / wall.Seconds()
}

// namedPhase is one scenario's phase, named as the report shows it.
type namedPhase struct {
	name string
	p    Phase
}

// scenarios are the measured scenarios of class c in report order: the
// two of the experiment, then the reference if the run measured one.
func (r *Results) scenarios(c string) []namedPhase {
	out := []namedPhase{{"centralized", r.Centralized[c]}, {"localdns", r.LocalDNS[c]}}
	if r.Reference != nil {
		out = append(out, namedPhase{"reference: " + r.Settings.Reference, r.Reference[c]})
	}
	return out
}

// writeRounds lists the latency rounds one by one, with the reference
// resolver's p99 and ratio when the run measured one.
func writeRounds(b *strings.Builder, r *Results) {
	s := r.Settings
	ref := r.Reference != nil
	fmt.Fprintf(b, "The table pools %d rounds. In each round the scenarios were measured back to back (which one first rotating from round to round), "+
		"so that they met the same machine; the latency bars take the median of the rounds' p99 ratios, so that one round disturbed by other work on the machine does not decide them.\n\n", len(r.Rounds))
	head := "| round | names | p99 centralized | p99 localdns | ratio | p50 centralized | p50 localdns |"
	sep := "|---|---|---|---|---|---|---|"
	if ref {
		head += " p99 reference | ratio (reference) |"
		sep += "---|---|"
	}
	scen := "centralized; localdns"
	if ref {
		scen += "; reference"
	}
	head += " CPU busy: load side / servers (" + scen + ") | stolen by the hypervisor (" + scen + ") |"
	sep += "---|---|"
	b.WriteString(head + "\n" + sep + "\n")
	for i, rd := range r.Rounds {
		for _, c := range Classes {
			a, l, x := rd.Centralized[c], rd.LocalDNS[c], rd.Reference[c]
			phases := []Phase{a, l}
			if ref {
				phases = append(phases, x)
			}
			var split, steal []string
			for _, p := range phases {
				split = append(split, fmt.Sprintf("%.0f%% / %.0f%%", 100*p.LoadCPUBusy, 100*p.ServerCPUBusy))
				steal = append(steal, fmt.Sprintf("%.1f%%", 100*p.Steal))
			}
			cpu := strings.Join(split, "; ")
			if !s.Pinned {
				cpu = "not pinned"
			}
			fmt.Fprintf(b, "| %d | %s | %s | %s | %.1fx | %s | %s |", i+1, c, fmtDur(a.P99), fmtDur(l.P99), rd.P99Ratio(c), fmtDur(a.P50), fmtDur(l.P50))
			if ref {
				fmt.Fprintf(b, " %s | %.1fx |", fmtDur(x.P99), rd.ReferenceP99Ratio(c))
			}
			fmt.Fprintf(b, " %s | %s |\n", cpu, strings.Join(steal, "; "))
		}
	}
	b.WriteString("\n")
	if !ref {
		return
	}
	fmt.Fprintf(b, "**The machine's floor.** In the same rounds the pods also queried a reference resolver: %s serving every name of the workload from memory "+
		"(its own static zones: no cache to miss, no upstream), on localdns's CPU, at another node-local address reached over the same veths with the same conntrack bypass. "+
		"Its p99 is what this machine's client, kernel path and hypervisor leave of the tail for any resolver answering from memory. "+
		"Median of the rounds' p99 ratios, centralized against each:\n\n| names | localdns | reference |\n|---|---|---|\n", s.Reference)
	for _, c := range Classes {
		lm, _ := r.MedianP99Ratio(c)
		xm, _ := r.MedianReferenceP99Ratio(c)
		fmt.Fprintf(b, "| %s | %.1fx | %.1fx |\n", c, lm, xm)
	}
	b.WriteString("\n")
}
