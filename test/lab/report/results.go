// Package report holds the lab's results, judges them against the bars of
// issue #7, and writes them as a Markdown report with PNG charts and a JSON
// file of the raw numbers.
package report

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/localdns/localdns/test/lab/perf"
)

// Phase is one measured dnsperf run (or several pods' runs merged) with the
// counters read on the servers around it.
type Phase struct {
	Scenario string // "centralized" or "localdns"
	Class    string // "cluster", "external" or "mixed"
	Name     string // what the phase is, for the report

	Sent, Answered, Lost, Succeeded int
	Rcodes                          map[string]int
	P50, P95, P99, P999, Max        time.Duration
	Elapsed                         time.Duration
	Timeout                         time.Duration // dnsperf's; a lost query counts as this in the percentiles

	CoreDNS  []float64 // queries each CoreDNS backend received
	External float64   // queries the external resolver received
	Hits     float64   // localdns cache hits
	Misses   float64   // localdns cache misses
	Stale    float64   // stale answers localdns served

	MachineBusy  float64 // share of the machine's CPU busy during the phase (lab included)
	Steal        float64 // share of the machine's CPU time the hypervisor took (steal; counted in MachineBusy)
	EmulationCPU float64 // CPU seconds the emulation (delay proxies, external resolver) used
	CoreDNSCPU   float64 // CPU seconds both CoreDNS pods used
	LocalDNSCPU  float64 // CPU seconds localdns used
	LoadAvg      float64 // 1-minute load average at the end of the phase
	// With pinning: how busy the load side's CPU (dnsperf, emulation, the
	// lab) and the servers' CPU were during the phase.
	LoadCPUBusy   float64
	ServerCPUBusy float64
	ClientCPU     float64 // CPU seconds the dnsperf processes used
}

// FromResult fills the dnsperf side of a phase. Percentiles are over every
// query sent, a lost one counting as the dnsperf timeout.
func FromResult(scenario, class, name string, r *perf.Result, timeout time.Duration) Phase {
	return Phase{
		Scenario: scenario, Class: class, Name: name,
		Sent: r.Sent, Answered: r.Answered, Lost: r.Lost, Succeeded: r.Succeeded, Rcodes: r.Rcodes,
		P50: r.PercentileSent(50, timeout), P95: r.PercentileSent(95, timeout), P99: r.PercentileSent(99, timeout),
		P999: r.PercentileSent(99.9, timeout), Max: r.PercentileSent(100, timeout),
		Elapsed: r.Elapsed, Timeout: timeout, ClientCPU: r.CPU.Seconds(),
	}
}

// Plus adds o's server-side counters and CPU times to p's (the rounds of
// one scenario); the busy shares become averages weighted by phase length.
func (p Phase) Plus(o Phase) Phase {
	p.CoreDNS = slices.Clone(p.CoreDNS)
	for i, v := range o.CoreDNS {
		if i < len(p.CoreDNS) {
			p.CoreDNS[i] += v
		} else {
			p.CoreDNS = append(p.CoreDNS, v)
		}
	}
	p.External += o.External
	p.Hits += o.Hits
	p.Misses += o.Misses
	p.Stale += o.Stale
	w1, w2 := p.Elapsed.Seconds(), o.Elapsed.Seconds()
	avg := func(a, b float64) float64 {
		if w1+w2 == 0 {
			return max(a, b)
		}
		return (a*w1 + b*w2) / (w1 + w2)
	}
	p.MachineBusy = avg(p.MachineBusy, o.MachineBusy)
	p.Steal = avg(p.Steal, o.Steal)
	p.LoadCPUBusy = avg(p.LoadCPUBusy, o.LoadCPUBusy)
	p.ServerCPUBusy = avg(p.ServerCPUBusy, o.ServerCPUBusy)
	p.EmulationCPU += o.EmulationCPU
	p.CoreDNSCPU += o.CoreDNSCPU
	p.LocalDNSCPU += o.LocalDNSCPU
	p.ClientCPU += o.ClientCPU
	p.LoadAvg = max(p.LoadAvg, o.LoadAvg)
	p.Elapsed += o.Elapsed
	return p
}

// WithCountersOf returns p (dnsperf's side) with the server-side counters
// and CPU figures of o.
func (p Phase) WithCountersOf(o Phase) Phase {
	p.CoreDNS = slices.Clone(o.CoreDNS)
	p.External, p.Hits, p.Misses, p.Stale = o.External, o.Hits, o.Misses, o.Stale
	p.MachineBusy, p.LoadCPUBusy, p.ServerCPUBusy = o.MachineBusy, o.LoadCPUBusy, o.ServerCPUBusy
	p.EmulationCPU, p.CoreDNSCPU, p.LocalDNSCPU = o.EmulationCPU, o.CoreDNSCPU, o.LocalDNSCPU
	p.LoadAvg = o.LoadAvg
	return p
}

// SuccessRate is the share of queries answered with the expected rcode.
func (p Phase) SuccessRate() float64 {
	if p.Sent == 0 {
		return 0
	}
	return float64(p.Succeeded) / float64(p.Sent)
}

// QPS is the rate dnsperf achieved.
func (p Phase) QPS() float64 {
	if p.Elapsed <= 0 {
		return 0
	}
	return float64(p.Sent) / p.Elapsed.Seconds()
}

// CoreDNSTotal is the queries all CoreDNS backends received.
func (p Phase) CoreDNSTotal() float64 {
	var t float64
	for _, v := range p.CoreDNS {
		t += v
	}
	return t
}

// Settings describe how the run was made.
type Settings struct {
	Variant          string
	QPS              int
	Pods             int
	ClientsPerPod    int
	PhaseDuration    time.Duration // each measured phase of a round
	Rounds           int           // latency rounds
	ClusterNames     int
	ExternalNames    int
	ZipfS            float64
	CoreDNSDelay     string // the emulated hop to a CoreDNS pod
	ExternalDelay    string // the emulated delay of the external resolver
	CoreDNSHold      string // what the hops to the CoreDNS pods actually held queries, measured
	ExternalHold     string // what the external resolver actually held queries, measured
	ClusterTTL       int
	ExternalTTL      int
	OutageDuration   time.Duration
	Restarts         int
	ReceiveBuffer    int    // bytes, as ReceiveBuffer= of localdns.socket (the kernel doubles it)
	SocketActivation bool   // localdns took the held sockets
	ActivationNote   string // why not, if not
	LocalDNSVersion  string
	CoreDNSVersion   string
	DNSPerfVersion   string
	Machine          string
	Nice             int     // nice(1) adjustment of the lab's processes
	NiceGroup        string  // how the lab's scheduler autogroup was reniced, if it was
	Pinned           bool    // load side and servers on separate CPUs
	Pinning          string  // which CPUs ran what, or why nothing was pinned
	BusyBefore       float64 // share of the machine's CPU busy in the 2 s before the lab started
	LatencyAdvisory  bool    // the latency bars were shown, not enforced (lab run -enforce-latency=false)
	// Reference names the resolver measured as the machine's floor
	// ("unbound 1.17.1"), "" when the run did not measure one.
	Reference string
	Started   time.Time
	Took      time.Duration
}

// Results is everything one lab run measured.
type Results struct {
	Settings Settings
	// Backends names the CoreDNS pods, in the order of Phase.CoreDNS.
	Backends []string
	// ServiceCheck is how a probe of 40 fresh flows to the service address
	// spread over the backends (by NSID), proving the DNAT works.
	ServiceCheck map[string]int

	Centralized map[string]Phase // by class, the rounds pooled
	LocalDNS    map[string]Phase // by class, the rounds pooled
	// Reference is the machine's floor (Settings.Reference): another
	// resolver answering the same names from memory, on the same CPU and
	// path as localdns, measured in the same rounds. By class, the rounds
	// pooled; nil when the run did not measure it.
	Reference map[string]Phase
	// Rounds are the latency rounds one by one: in each, both scenarios
	// were measured back to back per class.
	Rounds []Round
	// LocalDNSWarm is localdns's warm-up (every name once), counted with
	// the measured phases for the share of what localdns forwards.
	LocalDNSWarm Phase
	Outage       Phase
	Restart      Phase
	// RestartPIDs are localdns's PIDs before and after each restart.
	RestartPIDs []int
	// RestartGaps are how long each restart took, stop to answering.
	RestartGaps []time.Duration
	// Notes are things that went wrong in a scenario without breaking the
	// lab (localdns not coming back after a restart).
	Notes []string
}

// Round is one latency round: each class measured in every scenario.
type Round struct {
	Centralized map[string]Phase
	LocalDNS    map[string]Phase
	Reference   map[string]Phase // nil when the run did not measure it
}

// P99Ratio is how many times lower localdns's p99 was than centralized's
// for class in this round (0 when not measured).
func (r Round) P99Ratio(class string) float64 {
	return p99Ratio(r.Centralized[class], r.LocalDNS[class])
}

// ReferenceP99Ratio is how many times lower the reference resolver's p99
// was than centralized's for class in this round (0 when not measured).
func (r Round) ReferenceP99Ratio(class string) float64 {
	return p99Ratio(r.Centralized[class], r.Reference[class])
}

func p99Ratio(a, b Phase) float64 {
	if a.P99 <= 0 || b.P99 <= 0 {
		return 0
	}
	return float64(a.P99) / float64(b.P99)
}

// MedianP99Ratio is the median over the rounds of P99Ratio(class), with
// the ratios in round order.
func (r *Results) MedianP99Ratio(class string) (median float64, ratios []float64) {
	return r.medianRatio(func(rd Round) float64 { return rd.P99Ratio(class) })
}

// MedianReferenceP99Ratio is MedianP99Ratio for the reference resolver.
func (r *Results) MedianReferenceP99Ratio(class string) (median float64, ratios []float64) {
	return r.medianRatio(func(rd Round) float64 { return rd.ReferenceP99Ratio(class) })
}

func (r *Results) medianRatio(ratio func(Round) float64) (median float64, ratios []float64) {
	for _, rd := range r.Rounds {
		if x := ratio(rd); x > 0 {
			ratios = append(ratios, x)
		}
	}
	if len(ratios) == 0 {
		return 0, nil
	}
	sorted := slices.Sorted(slices.Values(ratios))
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2], ratios
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2, ratios
}

// Bar is one pass/fail criterion.
type Bar struct {
	Name     string
	Want     string
	Got      string
	Pass     bool
	Measured bool // false: could not be evaluated (counts as a failure)
	// Advisory bars are measured and shown but do not decide the run
	// (Settings.LatencyAdvisory: the latency bars on a machine too small to
	// judge them fairly).
	Advisory bool
}

// Classes are the measured name classes, in report order.
var Classes = []string{"cluster", "external"}

// Bars judges r against the bars of issue #7.
func (r *Results) Bars() []Bar {
	var bars []Bar
	for _, c := range Classes {
		a, b := r.Centralized[c], r.LocalDNS[c]
		bar := Bar{Name: fmt.Sprintf("p99 latency, %s names (cache hits)", c), Want: "localdns at least 10x below centralized (median round)", Advisory: r.Settings.LatencyAdvisory}
		if median, ratios := r.MedianP99Ratio(c); median > 0 && a.P99 > 0 && b.P99 > 0 {
			bar.Measured, bar.Pass = true, median >= 10
			var each []string
			for _, x := range ratios {
				each = append(each, fmt.Sprintf("%.1fx", x))
			}
			bar.Got = fmt.Sprintf("median %.1fx (rounds %s); pooled %s vs %s: %.1fx", median, strings.Join(each, ", "),
				fmtDur(b.P99), fmtDur(a.P99), float64(a.P99)/float64(b.P99))
		}
		bars = append(bars, bar)
	}

	share := Bar{Name: "CoreDNS backend balance (localdns)", Want: "no backend above 70% of what localdns forwards"}
	fwd := make([]float64, len(r.Backends))
	for _, p := range append([]Phase{r.LocalDNSWarm}, r.LocalDNS["cluster"], r.LocalDNS["external"]) {
		for i, v := range p.CoreDNS {
			fwd[i] += v
		}
	}
	var total, top float64
	for _, v := range fwd {
		total += v
		top = max(top, v)
	}
	if total >= 100 {
		share.Measured, share.Pass = true, top/total <= 0.70
		share.Got = fmt.Sprintf("busiest backend %.1f%% of %.0f queries", 100*top/total, total)
	} else {
		share.Got = fmt.Sprintf("only %.0f queries forwarded: too few to judge", total)
	}
	bars = append(bars, share)

	load := Bar{Name: "queries reaching CoreDNS", Want: "at least 90% fewer with localdns"}
	var ca, cb float64
	for _, c := range Classes {
		ca += r.Centralized[c].CoreDNSTotal()
		cb += r.LocalDNS[c].CoreDNSTotal()
	}
	if ca > 0 {
		red := 1 - cb/ca
		load.Measured, load.Pass = true, red >= 0.90
		load.Got = fmt.Sprintf("%.0f vs %.0f: %.2f%% fewer", cb, ca, 100*red)
	}
	bars = append(bars, load)

	out := Bar{Name: "upstream outage", Want: "100% success for names seen before"}
	if r.Outage.Sent > 0 {
		out.Measured, out.Pass = true, r.Outage.Succeeded == r.Outage.Sent
		out.Got = fmt.Sprintf("%d of %d succeeded (%.3f%%), %.0f stale answers", r.Outage.Succeeded, r.Outage.Sent, 100*r.Outage.SuccessRate(), r.Outage.Stale)
	}
	bars = append(bars, out)

	rs := Bar{Name: fmt.Sprintf("localdns restarted %d times under load", r.Settings.Restarts), Want: "zero lost queries"}
	if r.Restart.Sent > 0 {
		lost := r.Restart.Sent - r.Restart.Succeeded
		restarted := len(r.RestartPIDs) == r.Settings.Restarts+1
		for i := 1; i < len(r.RestartPIDs); i++ {
			restarted = restarted && r.RestartPIDs[i] != r.RestartPIDs[i-1]
		}
		rs.Measured, rs.Pass = restarted, restarted && lost == 0
		rs.Got = fmt.Sprintf("%d of %d lost or failed (%d timed out)", lost, r.Restart.Sent, r.Restart.Lost)
		if !restarted {
			rs.Got += "; localdns was not restarted as planned"
		}
	}
	bars = append(bars, rs)
	return bars
}

// Passed reports whether every enforced bar passed.
func Passed(bars []Bar) bool {
	for _, b := range bars {
		if !b.Pass && !b.Advisory {
			return false
		}
	}
	return true
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}
