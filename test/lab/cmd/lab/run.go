package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/test/lab/delayproxy"
	"github.com/localdns/localdns/test/lab/perf"
	"github.com/localdns/localdns/test/lab/report"
	"github.com/localdns/localdns/test/lab/sockact"
	"github.com/localdns/localdns/test/lab/topo"
	"github.com/localdns/localdns/test/lab/workload"
)

// variant is how long and how hard a lab run measures.
type variant struct {
	name        string
	rounds      int           // latency rounds, each measuring both scenarios back to back
	phase       time.Duration // each measured phase of a round
	outagePre   time.Duration
	outage      time.Duration
	outagePost  time.Duration
	restartRun  time.Duration // the dnsperf run the restarts happen in
	restartAt   []time.Duration
	lookups     int // lookups per pod data file
	names       int // names per class
	qps         int // total, split over the pods
	clients     int // dnsperf sockets per pod
	hopBase     time.Duration
	hopJitter   time.Duration
	extBase     time.Duration
	extJitter   time.Duration
	clusterTTL  int
	externalTTL int
	// reference: the latency rounds measure the reference resolver as well
	// (reference.go); the short variant leaves it out to stay under 3 min.
	reference bool
}

var variants = map[string]variant{
	"full": {
		name: "full", rounds: 11, phase: 4 * time.Second,
		outagePre: 5 * time.Second, outage: 30 * time.Second, outagePost: 5 * time.Second,
		restartRun: 40 * time.Second, restartAt: []time.Duration{8 * time.Second, 22 * time.Second},
		lookups: 150000, names: 3000, qps: 10000, clients: 2,
		hopBase: time.Millisecond, hopJitter: 250 * time.Microsecond,
		extBase: 2 * time.Millisecond, extJitter: 500 * time.Microsecond,
		clusterTTL: 30, externalTTL: 60, reference: true,
	},
	"short": {
		name: "short", rounds: 6, phase: 2500 * time.Millisecond,
		outagePre: 2 * time.Second, outage: 30 * time.Second, outagePost: 2 * time.Second,
		restartRun: 18 * time.Second, restartAt: []time.Duration{4 * time.Second, 10 * time.Second},
		lookups: 50000, names: 3000, qps: 10000, clients: 2,
		hopBase: time.Millisecond, hopJitter: 250 * time.Microsecond,
		extBase: 2 * time.Millisecond, extJitter: 500 * time.Microsecond,
		clusterTTL: 30, externalTTL: 60,
	},
}

// lab is one run's state.
type lab struct {
	v              variant
	self           string // this binary
	bin            string // directory with localdns and coredns-stock
	dir            string // scratch directory
	procs          *procs
	localdn        *proc
	res            *report.Results
	data           map[string][]string // data files per purpose, one per pod
	upOnly         bool                // stop after starting everything (lab up)
	rcvbuf         int                 // ReceiveBuffer= of the socket unit the harness mimics
	quietWait      time.Duration       // how long to wait for a quiet machine
	nice           int                 // nice(1) adjustment of every process the lab starts
	noActivation   bool                // localdns binds its own sockets
	pin            pinning             // which CPUs the load side and the servers run on
	groupNote      string              // how the lab's autogroup was reniced
	keep           bool                // keep dnsperf's per-query output in the scratch directory
	enforceLatency bool                // the latency bars decide the run
	names          map[string][]string // the workload's names per class
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	short := fs.Bool("short", false, "the short variant (CI)")
	out := fs.String("out", "", "directory for the report (default test/lab/results/<variant>)")
	bin := fs.String("bin", "bin", "directory holding localdns and coredns-stock")
	keep := fs.Bool("keep", false, "keep the scratch directory (logs, data files)")
	// The lab measures a design, not the machine's other tenants: its
	// processes (both scenarios alike) get a higher CPU weight than the
	// rest, so a neighbour's benchmark does not decide the tail latency.
	nice := fs.Int("nice", -10, "nice(1) adjustment of every process the lab starts (servers, localdns, dnsperf), both scenarios alike; 0: none")
	unit := fs.String("socket-unit", "systemd/localdns.socket", "socket unit whose ReceiveBuffer= the harness uses")
	noAct := fs.Bool("no-activation", false, "run localdns on sockets it binds itself (no socket activation), for comparison")
	quietWait := fs.Duration("quiet-wait", 0, "before starting, wait up to this long for the machine to be less than 30% busy (a shared machine)")
	pin := fs.Bool("pin", true, "pin the load side (dnsperf, emulation, the lab) to one CPU and the servers under test to another, both scenarios alike (needs 2 CPUs)")
	enforceLatency := fs.Bool("enforce-latency", true, "fail the run when a p99 latency bar is missed; false shows them as advisory (CI on a small shared machine, where the tail measures the neighbours: see README.md)")
	reference := fs.Bool("reference", true, "measure the reference resolver (unbound answering from memory on localdns's CPU) in the latency rounds of the full variant; the short variant never does")
	up := fs.Bool("up", false, "only build the lab and start every server, then wait for SIGINT (for poking around)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	v := variants["full"]
	if *short {
		v = variants["short"]
	}
	v.reference = v.reference && *reference
	if *out == "" {
		*out = filepath.Join("test/lab/results", v.name)
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, nftables)")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	for _, tool := range []string{filepath.Join(binDir, "localdns"), filepath.Join(binDir, "coredns-stock"), "dnsperf", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("missing %s (build bin/ with `go build -o bin/localdns ./cmd/localdns` and `go build -o bin/coredns-stock ./test/bench/stockcoredns`; apt packages dnsperf nftables iproute2): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "ldlab-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	} else {
		logf("scratch directory %s kept", dir)
	}
	rcvbuf, err := sockact.UnitReceiveBuffer(*unit)
	if err != nil {
		return err
	}
	pins := planPinning(*pin)
	if pins.load != "" {
		// Twice: a thread the runtime clones while the first pass runs
		// may have started from an unpinned one.
		for range 2 {
			if err := pinSelf(pins.loadCPU); err != nil {
				return err
			}
		}
	}
	logf("CPUs: %s", pins.note)
	var groupNote string
	if *nice != 0 {
		restore, note, err := autogroupNice(*nice)
		if err != nil {
			return err
		}
		defer restore()
		groupNote = note
		logf("scheduling: %s", note)
	}
	l := &lab{groupNote: groupNote, pin: pins, rcvbuf: rcvbuf, v: v, self: self, bin: binDir, dir: dir, procs: &procs{logDir: dir, nice: *nice}, nice: *nice, data: map[string][]string{}, upOnly: *up, quietWait: *quietWait, noActivation: *noAct, enforceLatency: *enforceLatency, keep: *keep}

	// One lab at a time: a second run would tear down the first's network.
	lock, err := topo.Lock()
	if err != nil {
		return err
	}
	defer lock.Close()

	// Leftovers of a killed run: end their processes, delete them.
	if left, err := topo.Leftovers(); err != nil {
		return err
	} else if len(left) > 0 {
		logf("removing leftover lab namespaces %v", left)
		killNamespacePids(left)
		if err := topo.Teardown(); err != nil {
			return fmt.Errorf("leftover lab namespaces %v cannot be removed: %w", left, err)
		}
	}

	// Clean up on every exit path, including SIGINT/SIGTERM.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cleanup := func() {
		l.procs.stopAll()
		if left, _ := topo.Leftovers(); len(left) > 0 {
			killNamespacePids(left)
		}
		if err := topo.Teardown(); err != nil {
			logf("teardown: %v", err)
		}
	}
	defer cleanup()
	errc := make(chan error, 1)
	go func() { errc <- l.run() }()
	if l.upOnly {
		if err := <-errc; err != nil {
			return err
		}
		logf("lab up (scratch %s); SIGINT tears it down", dir)
		<-ctx.Done()
		return nil
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
		logf("interrupted: cleaning up")
		cleanup()
		return errors.New("interrupted")
	}
	if err != nil {
		if l.localdn != nil {
			logf("localdns log tail:\n%s", l.localdn.tail(2000))
		}
		return err
	}
	bars := l.res.Bars()
	if err := report.Write(*out, l.res, bars); err != nil {
		return err
	}
	logf("report written to %s", *out)
	for _, b := range bars {
		status := "PASS"
		if !b.Pass {
			status = "FAIL"
		}
		if b.Advisory {
			status += " (advisory)"
		}
		fmt.Printf("%s  %-45s %s (want %s)\n", status, b.Name, b.Got, b.Want)
	}
	if !report.Passed(bars) {
		return exitCode(1)
	}
	return nil
}

func cleanCmd(args []string) error {
	lock, err := topo.Lock()
	if err != nil {
		return err
	}
	defer lock.Close()
	left, err := topo.Leftovers()
	if err != nil {
		return err
	}
	killNamespacePids(left)
	return topo.Teardown()
}

// machineBusy samples how busy the machine's CPUs are over d.
func machineBusy(d time.Duration) float64 {
	a := readCPU("cpu")
	time.Sleep(d)
	return readCPU("cpu").busySince(a)
}

func (l *lab) run() error {
	busy := machineBusy(2 * time.Second)
	for deadline := time.Now().Add(l.quietWait); busy > 0.30 && time.Now().Before(deadline); busy = machineBusy(2 * time.Second) {
		logf("machine %.0f%% busy before the lab started; waiting for a quieter moment", 100*busy)
		time.Sleep(3 * time.Second)
	}
	logf("machine %.0f%% busy before the lab started", 100*busy)
	start := time.Now()
	v := l.v
	l.res = &report.Results{
		Settings: report.Settings{
			Variant: v.name, QPS: v.qps, Pods: len(topo.Pods), ClientsPerPod: v.clients, PhaseDuration: v.phase, Rounds: v.rounds,
			ClusterNames: v.names, ExternalNames: v.names, ZipfS: workload.ZipfS,
			CoreDNSDelay:   fmt.Sprintf("%v fixed + exponential jitter with mean %v, per query, request path (delay proxy in each CoreDNS pod)", v.hopBase, v.hopJitter),
			ExternalDelay:  fmt.Sprintf("%v fixed + exponential jitter with mean %v, per query (in the external resolver)", v.extBase, v.extJitter),
			ClusterTTL:     v.clusterTTL,
			ExternalTTL:    v.externalTTL,
			OutageDuration: v.outage, Restarts: len(v.restartAt), ReceiveBuffer: l.rcvbuf,
			LocalDNSVersion: firstLine(exec.Command(filepath.Join(l.bin, "localdns"), "version").Output()),
			CoreDNSVersion:  firstLine(exec.Command(filepath.Join(l.bin, "coredns-stock"), "-version").Output()),
			DNSPerfVersion:  dnsperfVersion(),
			Machine:         fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, kernel()),
			Started:         start.UTC(),
			BusyBefore:      busy,
			Nice:            l.nice,
			NiceGroup:       l.groupNote,
			Pinning:         l.pin.note,
			Pinned:          l.pin.load != "",
			LatencyAdvisory: !l.enforceLatency,
		},
		Centralized: map[string]report.Phase{},
		LocalDNS:    map[string]report.Phase{},
	}
	for _, p := range topo.CoreDNSPods {
		l.res.Backends = append(l.res.Backends, strings.TrimPrefix(p.Netns, topo.Prefix))
	}

	logf("building the lab network")
	// localdns puts its listener addresses on the node itself (netsetup,
	// "manage: true"), on lo here: the kernel has no dummy link type.
	if err := topo.Build(false); err != nil {
		return err
	}
	if err := l.writeData(); err != nil {
		return err
	}
	if err := l.startServers(); err != nil {
		return err
	}
	if v.reference {
		if err := l.startReference(); err != nil {
			return err
		}
	}

	if l.upOnly {
		return l.startLocalDNS()
	}

	// Both scenarios' servers run from here on, so that the latency rounds
	// can alternate between them.
	if err := l.startLocalDNS(); err != nil {
		return err
	}
	logf("scenario B (localdns): warm-up")
	before := l.counters()
	warm, err := l.dnsperfWarm(topo.ClusterListener, true)
	if err != nil {
		return err
	}
	l.res.LocalDNSWarm = l.withCounters(report.FromResult("localdns", "mixed", "warm-up: every name once", warm, 5*time.Second), before, l.counters())

	// The faults come before the latency rounds: they keep localdns under
	// load for a minute, so that by the rounds its entries have been
	// refreshed at times spread the way traffic spreads them, not all at
	// the instant of the warm-up.
	if err := l.placeCoreDNS("localdns"); err != nil {
		return err
	}
	if err := l.outage(); err != nil {
		return err
	}
	if err := l.restarts(); err != nil {
		return err
	}
	if err := l.latencyRounds(); err != nil {
		return err
	}
	hop, ext := l.holds()
	l.res.Settings.CoreDNSHold, l.res.Settings.ExternalHold = hop.String(), ext.String()
	l.res.Settings.Took = time.Since(start).Round(time.Second)
	return nil
}

// writeData writes the dnsperf data files: per class and pod a Zipf sample,
// a warm-up file with every name once, and mixed samples for the fault runs.
func (l *lab) writeData() error {
	names := map[string][]string{
		"cluster":  workload.Names(workload.Cluster, l.v.names, 1),
		"external": workload.Names(workload.External, l.v.names, 2),
	}
	l.names = names
	write := func(key string, pod int, queries []string) error {
		path := filepath.Join(l.dir, fmt.Sprintf("%s-pod%d.txt", key, pod+1))
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := workload.WriteData(f, queries); err != nil {
			f.Close()
			return err
		}
		l.data[key] = append(l.data[key], path)
		return f.Close()
	}
	for pod := range topo.Pods {
		seed := int64(100 * (pod + 1))
		for _, c := range report.Classes {
			if err := write(c, pod, workload.Sample(names[c], l.v.lookups, seed+int64(len(c)))); err != nil {
				return err
			}
		}
		mixed := interleave(workload.Sample(names["cluster"], l.v.lookups, seed+7), workload.Sample(names["external"], l.v.lookups, seed+8))
		if err := write("mixed", pod, mixed); err != nil {
			return err
		}
	}
	// The warm-up runs from one pod: every name of both classes once.
	return write("warm", 0, append(workload.Every(names["cluster"]), workload.Every(names["external"])...))
}

func interleave(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	for i := 0; i < len(a) || i < len(b); i++ {
		if i < len(a) {
			out = append(out, a[i])
		}
		if i < len(b) {
			out = append(out, b[i])
		}
	}
	return out
}

// startServers starts the external resolver, the CoreDNS pods and their
// delay proxies, and checks each answers and that the service address
// reaches both.
func (l *lab) startServers() error {
	v := l.v
	if _, err := l.procs.start("extdns", topo.AzureDNS, l.pin.load, l.self, "extdns",
		"-listen", topo.AzureDNSIP+":53", "-metrics", "127.0.0.1:9100",
		"-ttl", strconv.Itoa(v.externalTTL), "-base", v.extBase.String(), "-jitter", v.extJitter.String()); err != nil {
		return err
	}
	for i, p := range topo.CoreDNSPods {
		name := l.res.Backends[i]
		cf := filepath.Join(l.dir, "Corefile-"+name)
		if err := os.WriteFile(cf, []byte(coreDNSCorefile(name, v.clusterTTL)), 0o644); err != nil {
			return err
		}
		if _, err := l.procs.start(name, p.Netns, l.pin.servers, filepath.Join(l.bin, "coredns-stock"), "-conf", cf); err != nil {
			return err
		}
		if _, err := l.procs.start(name+"-hop", p.Netns, l.pin.load, l.self, "delayproxy",
			"-listen", p.Addr+":53", "-to", "127.0.0.1:1053", "-base", v.hopBase.String(), "-jitter", v.hopJitter.String(),
			"-metrics", hopMetrics); err != nil {
			return err
		}
	}
	for i, p := range topo.CoreDNSPods {
		if err := waitFor(10*time.Second, func() error {
			out, err := l.probe(topo.Pod1, p.Addr, "svc1.default.svc.cluster.local", 1)
			if err != nil {
				return err
			}
			if want := "NOERROR " + l.res.Backends[i]; strings.TrimSpace(out) != want {
				return fmt.Errorf("%s answered %q, want %q", p.Addr, strings.TrimSpace(out), want)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("CoreDNS pod %s: %w", l.res.Backends[i], err)
		}
	}
	if err := waitFor(10*time.Second, func() error {
		_, err := l.probe(topo.Pod1, topo.AzureDNSIP, "api1.example.com", 1)
		return err
	}); err != nil {
		return fmt.Errorf("external resolver: %w", err)
	}
	out, err := l.probe(topo.Pod1, topo.ServiceIP, "svc1.default.svc.cluster.local", 40)
	if err != nil {
		return fmt.Errorf("service address: %w", err)
	}
	l.res.ServiceCheck = map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			l.res.ServiceCheck[f[1]]++
		}
	}
	for _, b := range l.res.Backends {
		if l.res.ServiceCheck[b] == 0 {
			return fmt.Errorf("40 fresh flows to the service address never reached %s: %v", b, l.res.ServiceCheck)
		}
	}
	logf("servers up; service address spread over 40 flows: %v", l.res.ServiceCheck)
	return nil
}

// hopMetrics is where each delay proxy serves its measured hold (/hold),
// inside its CoreDNS pod's namespace.
const hopMetrics = "127.0.0.1:9101"

// holds reads how long the emulation actually held the queries so far: the
// hops to the CoreDNS pods (all together, weighted by their counts) and the
// external resolver.
func (l *lab) holds() (hop, ext delayproxy.HoldStats) {
	var n float64
	for i, p := range topo.CoreDNSPods {
		body, err := fetchIn(p.Netns, hopMetrics, "/hold")
		if err != nil {
			logf("hold of %s's hop: %v", l.res.Backends[i], err)
			continue
		}
		st, err := delayproxy.ParseHold([]byte(body))
		if err != nil || st.Count == 0 {
			continue
		}
		// Two proxies with the same model: count-weighted mean, and the
		// larger of the percentiles and maxima (an upper bound).
		w := float64(st.Count)
		hop.MeanUS = (hop.MeanUS*n + st.MeanUS*w) / (n + w)
		n += w
		hop.Count += st.Count
		hop.P50US, hop.P99US, hop.MaxUS = max(hop.P50US, st.P50US), max(hop.P99US, st.P99US), max(hop.MaxUS, st.MaxUS)
		hop.Configured = st.Configured
	}
	if body, err := fetchIn(topo.AzureDNS, "127.0.0.1:9100", "/hold"); err != nil {
		logf("hold of the external resolver: %v", err)
	} else if st, err := delayproxy.ParseHold([]byte(body)); err == nil {
		ext = st
	}
	return hop, ext
}

// coreDNSCorefile is a central CoreDNS pod: cluster.local answered the way
// the kubernetes plugin answers (services, TTL as kubeadm's "ttl 30",
// NXDOMAIN with the zone's SOA for everything else), the rest forwarded to
// the external resolver, and "cache 30" as in the default Corefile. Its NSID
// names the pod, so a probe can tell which backend answered.
func coreDNSCorefile(name string, ttl int) string {
	return fmt.Sprintf(`.:1053 {
    bind 127.0.0.1
    errors
    nsid %[1]s
    prometheus 127.0.0.1:9153
    template IN A cluster.local {
        match "^svc([0-9]+)\.default\.svc\.cluster\.local\.$"
        answer "{{ .Name }} %[2]d IN A 10.96.0.{{ index .Match 1 }}"
        fallthrough
    }
    template IN A cluster.local {
        match "^svc([0-9]+)\.ns([0-9]+)\.svc\.cluster\.local\.$"
        answer "{{ .Name }} %[2]d IN A 10.96.{{ index .Match 2 }}.{{ index .Match 1 }}"
        fallthrough
    }
    template ANY ANY cluster.local {
        rcode NXDOMAIN
        authority "cluster.local. %[2]d IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 %[2]d"
    }
    forward . %[3]s:53
    cache 30
}
`, name, ttl, topo.AzureDNSIP)
}

// localdnsProfile is the node profile localdns runs with in the lab: the AKS
// defaults with the lab's service address and external resolver. localdns
// manages the node's network as in production (listener addresses,
// conntrack-bypass rules), inside the node namespace; its state file goes to
// the scratch directory, not the machine's /run/localdns.
func (l *lab) localdnsProfile() string {
	return fmt.Sprintf(`listeners: {node: %s, cluster: %s}
port: 53
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: true, stateDir: %s}
metrics: 127.0.0.1:9253
memoryLimitInMB: 192
cache: {maxMemory: 64Mi, snapshot: %s}
`, topo.NodeListener, topo.ClusterListener, topo.ServiceIP, topo.AzureDNSIP, filepath.Join(l.dir, "state"), filepath.Join(l.dir, "cache.snapshot"))
}

// startLocalDNS starts localdns under the socket-activation harness, which
// holds both listeners' sockets as localdns.socket would. If localdns does
// not take them (socket activation not wired in), it is started without
// the harness's sockets, and the restart scenario measures plain restarts.
func (l *lab) startLocalDNS() error {
	profile := filepath.Join(l.dir, "localdns.yaml")
	if err := os.WriteFile(profile, []byte(l.localdnsProfile()), 0o644); err != nil {
		return err
	}
	var listens []string
	for _, a := range []string{topo.NodeListener, topo.ClusterListener} {
		listens = append(listens, "-listen", "udp:"+a+":53", "-listen", "tcp:"+a+":53")
	}
	argv := []string{"--", filepath.Join(l.bin, "localdns"), "run", "--config", profile}
	if l.noActivation {
		l.res.Settings.ActivationNote = "socket activation off for this run (-no-activation)"
		p, err := l.procs.start("localdns-plain", topo.Node, l.pin.servers, append([]string{l.self, "sockact"}, argv...)...)
		if err != nil {
			return err
		}
		l.localdn = p
		return l.waitLocalDNS(p, 20*time.Second)
	}
	listens = append(listens, "-rcvbuf", strconv.Itoa(l.rcvbuf))
	p, err := l.procs.start("localdns", topo.Node, l.pin.servers, append(append([]string{l.self, "sockact"}, listens...), argv...)...)
	if err != nil {
		return err
	}
	l.localdn = p
	if err := l.waitLocalDNS(p, 20*time.Second); err == nil {
		l.res.Settings.SocketActivation = true
		return nil
	} else if !p.exited() {
		return err
	}
	l.res.Settings.ActivationNote = "localdns did not start on the sockets passed by socket activation (LISTEN_FDS): " + lastLine(p.tail(600))
	logf("%s; measuring plain restarts instead", l.res.Settings.ActivationNote)
	p, err = l.procs.start("localdns-plain", topo.Node, l.pin.servers, append([]string{l.self, "sockact"}, argv...)...)
	if err != nil {
		return err
	}
	l.localdn = p
	return l.waitLocalDNS(p, 20*time.Second)
}

// waitLocalDNS waits until localdns answers its probe zone on the cluster
// listener from a pod.
func (l *lab) waitLocalDNS(p *proc, timeout time.Duration) error {
	return waitFor(timeout, func() error {
		if p.exited() {
			return errors.New("localdns exited: " + lastLine(p.tail(600)))
		}
		_, err := l.probe(topo.Pod1, topo.ClusterListener, "health-check.localdns.local", 1)
		return err
	})
}

// probe asks server (port 53) from netns and renders the answers one per
// line as "RCODE NSID".
func (l *lab) probe(netns, server, name string, n int) (string, error) {
	as, err := probeIn(netns, server+":53", name, n, 500*time.Millisecond)
	var b strings.Builder
	for _, a := range as {
		fmt.Fprintf(&b, "%s %s\n", a.rcode, a.nsid)
	}
	if err != nil {
		return b.String(), fmt.Errorf("probe from %s: %w", netns, err)
	}
	return b.String(), nil
}

func waitFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dnsperfWarm queries every name of both classes once from pod1; with
// complete, again until a pass gets every answer: the fault scenarios rely on
// every name having been seen, and a miss storm on a loaded machine can lose
// a few.
func (l *lab) dnsperfWarm(server string, complete bool) (*perf.Result, error) {
	return l.dnsperfPass(server, "warm", warmQPS, complete)
}

// dnsperfPass is dnsperfWarm on the data file key at qps.
func (l *lab) dnsperfPass(server, key string, qps int, complete bool) (*perf.Result, error) {
	run := perf.Run{Netns: topo.Pod1, Server: server, Data: l.data[key][0], Once: true, QPS: qps,
		Clients: l.v.clients, Outstand: 500, Timeout: 5 * time.Second, BufferKB: dnsperfBufferKB, Nice: l.nice, CPUs: l.pin.load}
	total := &perf.Result{}
	for pass := 1; ; pass++ {
		res, err := perf.RunAll([]perf.Run{run}, workload.Expected)
		if err != nil {
			return nil, err
		}
		total.Merge(res)
		logf("  warm-up pass %d: %d of %d answered as expected, %.0f QPS", pass, res.Succeeded, res.Sent, float64(res.Sent)/res.Elapsed.Seconds())
		if res.Succeeded == res.Sent || !complete {
			return total, nil
		}
		if pass == 4 {
			l.keepFailures("warm-up", res)
			note := fmt.Sprintf("warm-up through %s: %d of %d queries still failed in pass %d; those names were not seen before the outage", server, res.Sent-res.Succeeded, res.Sent, pass)
			l.res.Notes = append(l.res.Notes, note)
			logf("  %s", note)
			return total, nil
		}
	}
}

// phaseTimeout is dnsperf's timeout in the measured and outage phases: an
// answer later than that is useless to a pod (glibc retries after 5 s, most
// clients give up sooner) and counts as lost.
const phaseTimeout = 2 * time.Second

// restartTimeout is dnsperf's timeout across the restarts: glibc's, so a
// query queued in the socket while localdns restarts counts as answered if
// the pod would still have been waiting for it.
const restartTimeout = 5 * time.Second

// dnsperfBufferKB is dnsperf's socket buffer size: large, so the client is
// not where answers are dropped when it misses a time slice.
const dnsperfBufferKB = 4096

// warmQPS is the warm-up rate: every query of the warm-up is a miss that
// goes to CoreDNS and possibly on to the external resolver.
const warmQPS = 3000

// rewarmQPS is the rate of the pass before each latency phase (the pods'
// rate): most of its queries are hits, the rest fetch again what expired
// since the last pass.
const rewarmQPS = 10000

// pods returns one dnsperf run per pod on the data files of key.
func (l *lab) pods(key, server string, d time.Duration, timeout time.Duration) []perf.Run {
	var runs []perf.Run
	for i, p := range topo.Pods {
		runs = append(runs, perf.Run{Netns: p.Netns, Server: server, Data: l.data[key][i], QPS: l.v.qps / len(topo.Pods),
			Duration: d, Clients: l.v.clients, Outstand: 10000, Timeout: timeout, BufferKB: dnsperfBufferKB, Nice: l.nice, CPUs: l.pin.load})
	}
	return runs
}

// latencyRounds measures both scenarios v.rounds times, back to back and
// in alternating order, so that both see the same machine:
// on a shared machine a neighbour's burst then disturbs one round of both
// scenarios, not one scenario. The report pools the rounds per scenario and
// judges the latency bars on the rounds' median ratio.
func (l *lab) latencyRounds() error {
	type scenario struct{ name, server string }
	scenarios := []scenario{{"centralized", topo.ServiceIP}, {"localdns", topo.ClusterListener}}
	if l.v.reference {
		scenarios = append(scenarios, scenario{"reference", topo.ReferenceListener})
	}
	pooled := map[string]*pooledPhase{}
	for r := range l.v.rounds {
		round := report.Round{Centralized: map[string]report.Phase{}, LocalDNS: map[string]report.Phase{}}
		if l.v.reference {
			round.Reference = map[string]report.Phase{}
		}
		// Which scenario goes first rotates from round to round.
		k := r % len(scenarios)
		order := append(append([]scenario{}, scenarios[k:]...), scenarios[:k]...)
		for _, sc := range order {
			if err := l.placeCoreDNS(sc.name); err != nil {
				return err
			}
			// Cache-hit traffic: every name once through the scenario's
			// resolver right before its phases, so that what expired (TTL
			// 30 s) since the last pass is fetched again first.
			if _, err := l.dnsperfPass(sc.server, "warm", rewarmQPS, false); err != nil {
				return err
			}
			for _, c := range report.Classes {
				label := fmt.Sprintf("%s-%s-round%d", sc.name, c, r+1)
				p, res, err := l.measure(sc.name, c, sc.server, label)
				if err != nil {
					return err
				}
				key := sc.name + "/" + c
				if pooled[key] == nil {
					pooled[key] = &pooledPhase{res: &perf.Result{Rcodes: map[string]int{}}}
				}
				pooled[key].add(p, res)
				switch sc.name {
				case "centralized":
					round.Centralized[c] = p
				case "localdns":
					round.LocalDNS[c] = p
				default:
					round.Reference[c] = p
				}
			}
		}
		l.res.Rounds = append(l.res.Rounds, round)
	}
	if l.v.reference {
		l.res.Reference = map[string]report.Phase{}
	}
	for _, c := range report.Classes {
		l.res.Centralized[c] = pooled["centralized/"+c].phase("centralized", c)
		l.res.LocalDNS[c] = pooled["localdns/"+c].phase("localdns", c)
		if l.v.reference {
			l.res.Reference[c] = pooled["reference/"+c].phase("reference", c)
		}
	}
	return nil
}

// placeCoreDNS puts the CoreDNS pods on the servers' CPU for the
// centralized scenario, where they are the servers the pods query, and on
// the load side's CPU for the localdns scenario, where they are the rest of
// the cluster localdns forwards to (see planPinning), and for the reference,
// which does not use them.
func (l *lab) placeCoreDNS(scenario string) error {
	if l.pin.load == "" {
		return nil
	}
	cpu := l.pin.srvCPU
	if scenario != "centralized" {
		cpu = l.pin.loadCPU
	}
	for _, p := range l.procs.list {
		if strings.HasPrefix(p.name, "coredns-") && !strings.HasSuffix(p.name, "-hop") {
			if err := pinProcess(strconv.Itoa(p.cmd.Process.Pid), cpu); err != nil {
				return fmt.Errorf("place CoreDNS pod %s: %w", p.name, err)
			}
		}
	}
	return nil
}

// pooledPhase adds up one scenario's and class's phases over the rounds.
type pooledPhase struct {
	res    *perf.Result
	sum    report.Phase
	rounds int
}

func (pp *pooledPhase) add(p report.Phase, res *perf.Result) {
	elapsed := pp.res.Elapsed + res.Elapsed
	pp.res.Merge(res)
	pp.res.Elapsed = elapsed // rounds follow each other: their times add up
	pp.sum = pp.sum.Plus(p)
	pp.rounds++
}

func (pp *pooledPhase) phase(scenario, class string) report.Phase {
	p := report.FromResult(scenario, class, fmt.Sprintf("%s names, %d rounds pooled", class, pp.rounds), pp.res, phaseTimeout)
	return p.WithCountersOf(pp.sum)
}

// measure runs class's workload from every pod against server.
func (l *lab) measure(scenario, class, server, label string) (report.Phase, *perf.Result, error) {
	logf("scenario %s: %s names, %v at %d QPS (%s)", scenario, class, l.v.phase, l.v.qps, label)
	before := l.counters()
	res, err := perf.RunAll(l.outputs(label, l.pods(class, server, l.v.phase, phaseTimeout)), workload.Expected)
	if err != nil {
		return report.Phase{}, nil, err
	}
	l.keepFailures(label, res)
	p := l.withCounters(report.FromResult(scenario, class, class+" names", res, phaseTimeout), before, l.counters())
	logf("  p50 %v p95 %v p99 %v, success %.3f%%, %.0f QPS, lost %d, rcodes %v; CoreDNS %v, external %.0f, hits %.0f, misses %.0f, stale %.0f",
		p.P50, p.P95, p.P99, 100*p.SuccessRate(), p.QPS(), p.Lost, p.Rcodes, p.CoreDNS, p.External, p.Hits, p.Misses, p.Stale)
	return p, res, nil
}

// outputs keeps each run's per-query output (with -keep) in a file of the
// scratch directory named after label and the pod.
func (l *lab) outputs(label string, runs []perf.Run) []perf.Run {
	if !l.keep {
		return runs
	}
	for i := range runs {
		runs[i].Output = filepath.Join(l.dir, fmt.Sprintf("dnsperf-%s-pod%d.out", label, i+1))
	}
	return runs
}

// outage cuts every upstream off for the outage duration in the middle of a
// mixed run against localdns, after every name was seen in the warm-up.
func (l *lab) outage() error {
	v := l.v
	logf("fault: upstreams down for %v under %d QPS", v.outage, v.qps)
	before := l.counters()
	runs := l.outputs("outage", l.pods("mixed", topo.ClusterListener, v.outagePre+v.outage+v.outagePost, phaseTimeout))
	errc := make(chan error, 1)
	var res *perf.Result
	go func() {
		var err error
		res, err = perf.RunAll(runs, workload.Expected)
		errc <- err
	}()
	time.Sleep(v.outagePre)
	if err := topo.CutUpstreams(); err != nil {
		return err
	}
	time.Sleep(v.outage)
	if err := topo.RestoreUpstreams(); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	// The cut drops packets, so only the localdns counters are readable
	// from the node; CoreDNS and extdns counters are read after restore.
	l.keepFailures("outage", res)
	p := l.withCounters(report.FromResult("localdns", "mixed", fmt.Sprintf("upstreams down for %v", v.outage), res, phaseTimeout), before, l.counters())
	l.res.Outage = p
	logf("  success %d/%d, lost %d, rcodes %v, stale answers %.0f, p99 %v", p.Succeeded, p.Sent, p.Lost, p.Rcodes, p.Stale, p.P99)
	return nil
}

// restarts restarts localdns (SIGHUP to the harness: stop, then start on
// the same sockets) at the planned offsets of a mixed run.
func (l *lab) restarts() error {
	v := l.v
	logf("fault: localdns restarted %d times under %d QPS", len(v.restartAt), v.qps)
	before := l.counters()
	runs := l.outputs("restarts", l.pods("mixed", topo.ClusterListener, v.restartRun, restartTimeout))
	errc := make(chan error, 1)
	var res *perf.Result
	start := time.Now()
	go func() {
		var err error
		res, err = perf.RunAll(runs, workload.Expected)
		errc <- err
	}()
	pid, err := l.localdnsPID()
	if err != nil {
		return err
	}
	l.res.RestartPIDs = []int{pid}
	for _, at := range v.restartAt {
		time.Sleep(time.Until(start.Add(at)))
		t0 := time.Now()
		if err := l.localdn.signal(syscall.SIGHUP); err != nil {
			return err
		}
		// The new process answers once its PID differs and the probe works.
		err := waitFor(20*time.Second, func() error {
			if l.localdn.exited() {
				return errors.New("the harness exited: localdns stopped on its own")
			}
			p, err := l.localdnsPID()
			if err != nil {
				return err
			}
			if p == pid {
				return errors.New("not restarted yet")
			}
			_, err = l.probe(topo.Node, topo.ClusterListener, "health-check.localdns.local", 1)
			return err
		})
		if err != nil {
			// A localdns that does not come back is a result, not a
			// broken lab: record it and let the bars judge.
			note := fmt.Sprintf("restart at %v: localdns did not answer again within 20 s (%v); its log ends: %s", at, err, lastLine(l.localdn.tail(1500)))
			l.res.Notes = append(l.res.Notes, note)
			logf("  %s", note)
			break
		}
		pid, _ = l.localdnsPID()
		if left := start.Add(v.restartRun).Sub(time.Now()); left < 3*time.Second {
			when := fmt.Sprintf("only %v before the load ended", left.Round(time.Millisecond))
			if left < 0 {
				when = fmt.Sprintf("%v after the load ended", (-left).Round(time.Millisecond))
			}
			note := fmt.Sprintf("restart at %v: localdns answered again %s; what the restart lost is measured only partly", at, when)
			l.res.Notes = append(l.res.Notes, note)
			logf("  %s", note)
		}
		l.res.RestartPIDs = append(l.res.RestartPIDs, pid)
		l.res.RestartGaps = append(l.res.RestartGaps, time.Since(t0).Round(time.Millisecond))
		logf("  restarted: pid %d, answering after %v", pid, time.Since(t0).Round(time.Millisecond))
	}
	if err := <-errc; err != nil {
		return err
	}
	if n := strings.Count(l.localdn.tail(1<<20), "service exited on its own"); n > 0 {
		note := fmt.Sprintf("localdns exited on its own %d times during the restart run and was started again by the harness, as systemd would on traffic to its sockets", n)
		l.res.Notes = append(l.res.Notes, note)
		logf("  %s", note)
	}
	l.keepFailures("restart", res)
	p := l.withCounters(report.FromResult("localdns", "mixed", fmt.Sprintf("%d restarts", len(v.restartAt)), res, restartTimeout), before, l.counters())
	l.res.Restart = p
	logf("  success %d/%d, timed out %d, rcodes %v, p99 %v, max %v", p.Succeeded, p.Sent, p.Lost, p.Rcodes, p.P99, p.Max)
	return nil
}

// keepFailures writes a phase's first failed queries to the scratch
// directory and logs a few.
func (l *lab) keepFailures(phase string, res *perf.Result) {
	if len(res.Failures) == 0 {
		return
	}
	path := filepath.Join(l.dir, "failures-"+phase+".txt")
	os.WriteFile(path, []byte(strings.Join(res.Failures, "\n")+"\n"), 0o644)
	logf("  %s: %d failed queries, first: %q (more in %s)", phase, res.Sent-res.Succeeded, res.Failures[:min(3, len(res.Failures))], path)
}

// localdnsPID is the PID of the localdns process the harness runs.
func (l *lab) localdnsPID() (int, error) {
	// Go forks from any thread: look at every thread's children.
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", l.localdn.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	var f []string
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f = append(f, strings.Fields(string(data))...)
	}
	if len(f) == 0 {
		return 0, errors.New("no localdns process under the harness")
	}
	return strconv.Atoi(f[0])
}

// counters are the servers' cumulative counters at one moment.
type counters struct {
	cpu     cpuTimes
	loadCPU cpuTimes // the load side's CPU (when pinned)
	srvCPU  cpuTimes // the servers' CPU (when pinned)
	emuCPU  float64  // CPU seconds of the emulation: delay proxies, external resolver
	coreCPU float64  // CPU seconds of the CoreDNS pods
	ldCPU   float64  // CPU seconds of localdns
	coredns []float64
	ext     float64
	hits    float64
	misses  float64
	stale   float64
}

func (l *lab) counters() counters {
	c := counters{cpu: readCPU("cpu")}
	if l.pin.load != "" {
		c.loadCPU = readCPU("cpu" + strconv.Itoa(l.pin.loadCPU))
		c.srvCPU = readCPU("cpu" + strconv.Itoa(l.pin.srvCPU))
	}
	for _, p := range l.procs.list {
		switch {
		case strings.HasSuffix(p.name, "-hop") || p.name == "extdns":
			c.emuCPU += procCPU(p.cmd.Process.Pid)
		case strings.HasPrefix(p.name, "coredns-"):
			c.coreCPU += procCPU(p.cmd.Process.Pid)
		}
	}
	if l.localdn != nil {
		if pid, err := l.localdnsPID(); err == nil {
			c.ldCPU = procCPU(pid)
		}
	}
	for _, p := range topo.CoreDNSPods {
		c.coredns = append(c.coredns, metricSum(l.fetch(p.Netns, "127.0.0.1:9153"), "coredns_dns_requests_total"))
	}
	c.ext = metricSum(l.fetch(topo.AzureDNS, "127.0.0.1:9100"), "labdns_queries_total")
	if l.localdn != nil {
		m := l.fetch(topo.Node, "127.0.0.1:9253")
		c.hits = metricSum(m, "localdns_cache_hits_total")
		c.misses = metricSum(m, "localdns_cache_misses_total")
		c.stale = metricSum(m, "localdns_cache_stale_answers_total")
	}
	return c
}

func (l *lab) withCounters(p report.Phase, before, after counters) report.Phase {
	for i := range after.coredns {
		p.CoreDNS = append(p.CoreDNS, after.coredns[i]-before.coredns[i])
	}
	p.External = after.ext - before.ext
	p.Hits = after.hits - before.hits
	p.Misses = after.misses - before.misses
	p.Stale = after.stale - before.stale
	p.MachineBusy = after.cpu.busySince(before.cpu)
	p.Steal = after.cpu.stealSince(before.cpu)
	p.LoadCPUBusy = after.loadCPU.busySince(before.loadCPU)
	p.ServerCPUBusy = after.srvCPU.busySince(before.srvCPU)
	p.EmulationCPU = after.emuCPU - before.emuCPU
	p.CoreDNSCPU = after.coreCPU - before.coreCPU
	p.LocalDNSCPU = max(after.ldCPU-before.ldCPU, 0) // a restart resets it
	p.LoadAvg = loadAvg()
	return p
}

func (l *lab) fetch(netns, hostport string) string {
	out, err := fetchIn(netns, hostport, "/metrics")
	if err != nil {
		logf("metrics %s in %s: %v", hostport, netns, err)
	}
	return out
}

// metricSum adds up every sample of a metric in Prometheus text format.
func metricSum(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if !strings.HasPrefix(rest, " ") && !strings.HasPrefix(rest, "{") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func firstLine(out []byte, err error) string {
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	s, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}

func dnsperfVersion() string {
	out, _ := exec.Command("dnsperf", "-h").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Version") {
			return strings.TrimSpace(line)
		}
	}
	return "unknown"
}

func kernel() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "unknown kernel"
	}
	return "Linux " + strings.TrimSpace(string(out))
}

// cpuTimes are cumulative CPU times from /proc/stat; steal is the time the
// hypervisor ran something else while the VM wanted the CPU.
type cpuTimes struct{ busy, total, steal float64 }

// readCPU reads the /proc/stat line of label: "cpu" for the whole machine,
// "cpuN" for CPU N.
func readCPU(label string) cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	var f []string
	for _, line := range strings.Split(string(data), "\n") {
		if fs := strings.Fields(line); len(fs) > 1 && fs[0] == label {
			f = fs // cpu user nice system idle iowait irq softirq steal ...
			break
		}
	}
	if f == nil {
		return cpuTimes{}
	}
	var t cpuTimes
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i >= 8 { // guest times are already in user/nice
			break
		}
		t.total += x
		if i != 3 && i != 4 {
			t.busy += x
		}
		if i == 7 {
			t.steal += x
		}
	}
	return t
}

// busySince is the share of the CPU time that was busy since b, the lab's
// own processes included.
func (a cpuTimes) busySince(b cpuTimes) float64 {
	if a.total <= b.total {
		return 0
	}
	return (a.busy - b.busy) / (a.total - b.total)
}

// userHZ is the unit of /proc/stat and /proc/PID/stat times (USER_HZ).
const userHZ = 100

// stealSince is the share of the CPU time since b that the hypervisor
// stole (it counts in busySince too).
func (a cpuTimes) stealSince(b cpuTimes) float64 {
	if a.total <= b.total {
		return 0
	}
	return (a.steal - b.steal) / (a.total - b.total)
}

// loadAvg is the machine's 1-minute load average.
func loadAvg() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// procCPU returns the CPU seconds (user + system) process pid has used.
func procCPU(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may contain spaces) in ")".
	_, rest, ok := strings.Cut(string(data), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / userHZ
}
