// Command benchrun measures localdns against stock CoreDNS on this machine,
// in one run, with the same upstream, query file and client settings for
// both, and prints the numbers issue #3 asks for.
//
// Two benchmarks:
//
//   - qps (default): rounds that alternate the engines (stock CoreDNS with
//     cache, localdns with nodecache; the order flips every round so drift
//     on a shared box hits both alike). Each round starts a fresh server,
//     warms its cache with one pass over the query file, measures maximum
//     cache-hit QPS with dnsperf, then latency percentiles at a fixed rate
//     from dnsperf's per-query output.
//   - mem (-mem): one million unique names through a 32 MiB nodecache
//     budget, reporting the server's peak RSS (VmHWM) and the cache's own
//     size metric; stock cache alongside for comparison.
//
// It builds nothing (the Makefile does). Every server it talks to is one it
// started on 127.0.0.1: the fixed upstream runs in this process, the engines
// are child processes in their own process groups, killed on exit, on
// SIGINT/SIGTERM and at the deadline (and by the kernel if this process
// dies, via Pdeathsig).
//
// Knobs are environment variables (see envConfig) so `make bench` stays a
// one-liner.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/test/bench/upstream"
)

// config is the run's settings, from the environment.
type config struct {
	rounds     int
	seconds    int
	names      int
	rate       int
	client     []string // dnsperf client settings, same for every engine
	warm       []string // dnsperf settings of the warm-up pass
	engines    []string
	stock      string
	localdns   string
	corerun    string
	dir        string
	keep       bool
	memNames   int
	memRate    int
	memBudget  int64
	memSecs    int
	memEngines []string

	missNames    int
	missClient   []string
	missUpstream string // localdns's forwarding block in the miss benchmark

	stockCache    string
	nodecache     string
	localdnsExtra string
}

func envConfig() (config, error) {
	var errs []error
	num := func(key string, def int) int {
		v := os.Getenv(key)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive integer", key, v))
			return def
		}
		return n
	}
	str := func(key, def string) string {
		if v := os.Getenv(key); v != "" {
			return v
		}
		return def
	}
	c := config{
		rounds:     num("BENCH_ROUNDS", 3),
		seconds:    num("BENCH_SECONDS", 10),
		names:      num("BENCH_NAMES", 5000),
		rate:       num("BENCH_RATE", 20000),
		client:     strings.Fields(str("BENCH_DNSPERF", "-c 4 -T 2 -q 500")),
		warm:       strings.Fields(str("BENCH_DNSPERF_WARM", "-c 1 -q 20")),
		engines:    strings.Split(str("BENCH_ENGINES", "stock,localdns"), ","),
		stock:      str("BENCH_STOCK", "bin/coredns-stock"),
		localdns:   str("BENCH_LOCALDNS", "bin/localdns"),
		corerun:    str("BENCH_CORERUN", "bin/localdns-corefilerun"),
		dir:        os.Getenv("BENCH_DIR"),
		keep:       os.Getenv("BENCH_KEEP") != "",
		memNames:   num("BENCH_MEM_NAMES", 1000000),
		memRate:    num("BENCH_MEM_RATE", 20000),
		memBudget:  int64(num("BENCH_MEM_BUDGET", 32<<20)),
		memSecs:    num("BENCH_MEM_SECONDS", 120),
		memEngines: strings.Split(str("BENCH_MEM_ENGINES", "localdns,stock"), ","),

		missNames:  num("BENCH_MISS_NAMES", 20000),
		missClient: strings.Fields(str("BENCH_MISS_DNSPERF", "-c 4 -T 2 -q 500")),
		// The upstream plugin with its defaults, as localdns renders it
		// for the cluster DNS service (health checks on the cluster domain
		// would fail here: the pods answer A only).
		missUpstream: str("BENCH_MISS_UPSTREAM", "upstream {\n\t\tto 10.96.0.10:53\n\t}"),

		stockCache: str("BENCH_STOCK_CACHE", "cache"),
		nodecache: str("BENCH_NODECACHE", "nodecache {\n\t\tmax_ttl 3600\n\t\tdenial_ttl 3600\n"+
			"\t\tserve_stale immediate 3600\n\t\tmemory 67108864\n\t}"),
		// frontend: localdns serves the block's sockets itself, as every
		// Corefile it renders for a node does.
		localdnsExtra: str("BENCH_LOCALDNS_EXTRA", "frontend"),
	}
	return c, errors.Join(errs...)
}

// engine is one server under test.
type engine struct {
	name  string
	desc  string
	cache string                     // the cache directive block
	extra string                     // further directives of the block
	argv  func(conf string) []string // command line serving Corefile conf
}

func (c config) engine(name string) (engine, error) {
	name = strings.TrimSpace(name)
	switch name {
	case "stock":
		if err := executable(c.stock); err != nil {
			return engine{}, err
		}
		return engine{
			name:  name,
			desc:  "stock CoreDNS 1.15 (" + c.stock + "), cache",
			cache: c.stockCache,
			argv:  func(conf string) []string { return []string{c.stock, "-conf", conf, "-quiet"} },
		}, nil
	case "localdns":
		if err := executable(c.localdns); err == nil {
			return engine{
				name:  name,
				desc:  "localdns (" + c.localdns + " run --corefile), nodecache",
				cache: c.nodecache,
				extra: c.localdnsExtra,
				argv:  func(conf string) []string { return []string{c.localdns, "run", "--corefile", conf} },
			}, nil
		}
		fmt.Printf("note: %s not built; localdns slot runs the Corefile through %s instead\n", c.localdns, c.corerun)
		fallthrough
	case "nodecache-caddy":
		if err := executable(c.corerun); err != nil {
			return engine{}, err
		}
		return engine{
			name:  name,
			desc:  "localdns plugin build in CoreDNS's own server (" + c.corerun + "), nodecache",
			cache: c.nodecache,
			argv:  func(conf string) []string { return []string{c.corerun, "-corefile", conf} },
		}, nil
	}
	return engine{}, fmt.Errorf("unknown engine %q (want stock, localdns or nodecache-caddy)", name)
}

func executable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w (run make first)", path, err)
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s: not executable", path)
	}
	return nil
}

// corefile renders the benchmark's server block: the same for every engine
// except the cache directive (and extra, for engines that need one).
func corefile(port int, up string, e engine, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n\tbind 127.0.0.1\n", port)
	for _, x := range []string{e.extra, extra} {
		if x != "" {
			fmt.Fprintf(&b, "\t%s\n", x)
		}
	}
	fmt.Fprintf(&b, "\t%s\n\tforward . %s\n}\n", e.cache, up)
	return b.String()
}

func main() {
	mem := flag.Bool("mem", false, "run the memory benchmark instead of the QPS/latency one")
	miss := flag.Bool("miss", false, "run the cache-miss benchmark (network namespaces, needs root)")
	pod := flag.String("pod", "", "internal: serve the bench upstream on this address (in a network namespace) until killed")
	flag.Parse()
	if *pod != "" {
		if err := servePod(*pod); err != nil {
			fmt.Fprintln(os.Stderr, "benchrun -pod:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*mem, *miss); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

func run(mem, miss bool) error {
	cfg, err := envConfig()
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("dnsperf"); err != nil {
		return fmt.Errorf("dnsperf not installed: %w", err)
	}

	var budget time.Duration
	switch {
	case miss:
		budget = time.Duration(cfg.rounds*len(cfg.engines))*(time.Duration(cfg.missNames/1000)*time.Second+time.Minute) + time.Minute
	case mem:
		budget = 2*time.Duration(cfg.memSecs+60)*time.Second + time.Minute
	default:
		perEngine := time.Duration(2*cfg.seconds+90) * time.Second
		budget = time.Duration(cfg.rounds*len(cfg.engines))*perEngine + time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()

	dir := cfg.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "localdns-bench-"); err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
		if !cfg.keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}

	ps := newProcs()
	defer ps.killAll()
	if miss {
		printMachine()
		return missBench(ctx, cfg, dir, ps)
	}

	up, err := upstream.Start("127.0.0.1:0", net.IPv4(192, 0, 2, 53), 3600)
	if err != nil {
		return err
	}
	defer up.Close()

	printMachine()
	fmt.Printf("upstream: %s (A for any name, TTL 3600), work dir %s\n", up.Addr(), dir)
	if mem {
		return memBench(ctx, cfg, dir, up, ps)
	}
	return qpsBench(ctx, cfg, dir, up, ps)
}

// printMachine prints what the numbers were measured on, including the load
// at the start: this box is shared and its neighbours show in the numbers.
func printMachine() {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	var uts syscall.Utsname
	syscall.Uname(&uts)
	rel := make([]byte, 0, len(uts.Release))
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	ver, _ := exec.Command("dnsperf", "-h").CombinedOutput()
	dv := "dnsperf"
	for l := range strings.SplitSeq(string(ver), "\n") {
		if strings.HasPrefix(l, "Version") {
			dv = "dnsperf " + strings.TrimSpace(strings.TrimPrefix(l, "Version"))
		}
	}
	fmt.Printf("machine: %d CPUs (nproc), %s, Linux %s; %s; loadavg %s", nprocs(), model, rel, dv, load)
}

func nprocs() int {
	out, err := exec.Command("nproc").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			return n
		}
	}
	return 0
}

// server is a started engine.
type server struct {
	proc *child
	port int
	log  string
}

// startServer writes the Corefile, starts e and waits until it answers.
func startServer(ctx context.Context, ps *procs, e engine, dir, tag, up, extra string, port int) (*server, error) {
	var err error
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	conf := fmt.Sprintf("%s/%s-%s.Corefile", dir, e.name, tag)
	if err := os.WriteFile(conf, []byte(corefile(port, up, e, extra)), 0o644); err != nil {
		return nil, fmt.Errorf("write Corefile: %w", err)
	}
	logPath := fmt.Sprintf("%s/%s-%s.log", dir, e.name, tag)
	proc, err := ps.start(e.argv(conf), logPath)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := waitDNS(wctx, fmt.Sprintf("127.0.0.1:%d", port), proc); err != nil {
		ps.stop(proc, 2*time.Second)
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%s: %w\n%s", e.name, err, tail(out, 2000))
	}
	return &server{proc: proc, port: port, log: logPath}, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// dnsperf runs dnsperf against port with args and parses its output.
func dnsperf(ctx context.Context, port int, args ...string) (perfResult, error) {
	return runDNSPerf(ctx, "dnsperf", append([]string{"-s", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)...)
}

// runDNSPerf runs dnsperf as name with args (name is "dnsperf", or "ip"
// with "netns exec NS dnsperf ..." in args) and parses its output.
func runDNSPerf(ctx context.Context, name string, args ...string) (perfResult, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return perfResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return perfResult{}, fmt.Errorf("start dnsperf: %w", err)
	}
	res, perr := parseDNSPerf(out)
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return res, fmt.Errorf("dnsperf stopped: %w", ctx.Err())
	}
	if perr != nil {
		return res, fmt.Errorf("dnsperf %s: %w", strings.Join(args, " "), perr)
	}
	if werr != nil {
		return res, fmt.Errorf("dnsperf %s: %w", strings.Join(args, " "), werr)
	}
	return res, nil
}

// writeNames writes a dnsperf query file of n unique A questions.
func writeNames(path, format string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("query file: %w", err)
	}
	w := make([]byte, 0, 1<<16)
	for i := range n {
		w = fmt.Appendf(w, format, i)
		w = append(w, " A\n"...)
		if len(w) > 1<<15 {
			if _, err := f.Write(w); err != nil {
				f.Close()
				return fmt.Errorf("query file: %w", err)
			}
			w = w[:0]
		}
	}
	if _, err := f.Write(w); err != nil {
		f.Close()
		return fmt.Errorf("query file: %w", err)
	}
	return f.Close()
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
