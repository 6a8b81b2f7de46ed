package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/test/bench/upstream"
)

// round is one engine's measurements in one round.
type round struct {
	qps         float64
	maxLost     uint64
	p50, p99    time.Duration
	p999        time.Duration
	latLost     uint64
	latSent     uint64
	upstreamMax uint64 // upstream queries during the max-QPS run (cache misses)
	upstreamLat uint64 // and during the latency run
	peakRSS     int64
	cpu         usage // during the max-QPS run
	// latCPU is the server's CPU time per answered query in the fixed-rate
	// run: what a query costs the node when the server is not saturated,
	// a steadier figure than the latency percentiles on a shared box.
	latCPU time.Duration
}

func qpsBench(ctx context.Context, cfg config, dir string, up *upstream.Server, ps *procs) error {
	engines := make([]engine, 0, len(cfg.engines))
	for _, n := range cfg.engines {
		e, err := cfg.engine(n)
		if err != nil {
			return err
		}
		engines = append(engines, e)
	}
	queries := dir + "/queries"
	if err := writeNames(queries, "host-%05d.svc.bench.example.", cfg.names); err != nil {
		return err
	}
	fmt.Printf("workload: %d unique A names, %d rounds; per engine and round: warm-up pass, %d s max QPS, %d s at %d QPS\n",
		cfg.names, cfg.rounds, cfg.seconds, cfg.seconds, cfg.rate)
	fmt.Printf("client: dnsperf %s (same for every engine)\n", strings.Join(cfg.client, " "))
	for _, e := range engines {
		fmt.Printf("engine %s: %s\n", e.name, e.desc)
		fmt.Printf("  Corefile: %s", strings.ReplaceAll(corefile(0, up.Addr(), e, ""), "\n", "\n  "))
		fmt.Println()
	}

	results := map[string][]round{}
	for r := range cfg.rounds {
		order := slices.Clone(engines)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, e := range order {
			load := loadavg1()
			res, err := qpsRound(ctx, cfg, dir, queries, up, ps, e, r)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, e.name, err)
			}
			results[e.name] = append(results[e.name], res)
			fmt.Printf("round %d %-16s load %4.1f | %7.0f QPS (lost %d; cores: server %.2f = %.0fk QPS/core, dnsperf+runner %.2f, others %.2f) | at %d QPS: p50 %s p99 %s p99.9 %s (lost %d/%d), server CPU %s per query | upstream %d+%d | peak RSS %s\n",
				r+1, e.name, load, res.qps, res.maxLost, res.cpu.server, perCore(res)/1000, res.cpu.bench, res.cpu.other,
				cfg.rate, us(res.p50), us(res.p99), us(res.p999),
				res.latLost, res.latSent, us(res.latCPU), res.upstreamMax, res.upstreamLat, mib(res.peakRSS))
			if want := uint64(cfg.rate * cfg.seconds); res.latSent < want*95/100 {
				fmt.Printf("  ^ latency run sent %d of %d queries: the client could not hold %d QPS against this server on this box\n",
					res.latSent, want, cfg.rate)
			}
		}
	}

	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\nloadavg at end: %s\n", load)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "engine\tQPS (median)\tQPS per round\tQPS per server core\tothers' cores\tp50\tp99\tp99.9\tCPU per query\tpeak RSS\t\n")
	med, medPC := map[string]float64{}, map[string]float64{}
	medCPU := map[string]time.Duration{}
	for _, e := range engines {
		rs := results[e.name]
		var q, pc, oth []float64
		var p50, p99, p999, cpuq []time.Duration
		var rss int64
		var per []string
		for _, x := range rs {
			q = append(q, x.qps)
			pc, oth = append(pc, perCore(x)), append(oth, x.cpu.other)
			per = append(per, strconv.FormatFloat(x.qps/1000, 'f', 1, 64)+"k")
			p50, p99, p999 = append(p50, x.p50), append(p99, x.p99), append(p999, x.p999)
			cpuq = append(cpuq, x.latCPU)
			rss = max(rss, x.peakRSS)
		}
		med[e.name] = median(q)
		medPC[e.name] = median(pc)
		medCPU[e.name] = medianDur(cpuq)
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%.0f\t%.2f\t%s\t%s\t%s\t%s\t%s\t\n", e.name, med[e.name], strings.Join(per, " "),
			medPC[e.name], median(oth),
			us(medianDur(p50)), us(medianDur(p99)), us(medianDur(p999)), us(medCPU[e.name]), mib(rss))
	}
	tw.Flush()
	fmt.Printf("(all columns: median over rounds; latency: each round's percentile at a fixed %d QPS;\n"+
		" QPS per server core: max QPS / CPU the server used; others' cores: CPU used by processes outside the benchmark;\n"+
		" CPU per query: the server's CPU time per answered query at the fixed rate)\n", cfg.rate)
	if s, l := med["stock"], med["localdns"]; s > 0 && l > 0 {
		fmt.Printf("\nRATIO localdns/stock QPS = %.2f  (issue #3 bar: >= 1.3, target 1.6)\n", l/s)
		if ps, pl := medPC["stock"], medPC["localdns"]; ps > 0 {
			fmt.Printf("ratio localdns/stock QPS per server core = %.2f\n", pl/ps)
		}
		if cs, cl := medCPU["stock"], medCPU["localdns"]; cs > 0 && cl > 0 {
			fmt.Printf("ratio localdns/stock CPU per query at %d QPS = %.2f\n", cfg.rate, float64(cl)/float64(cs))
		}
	}
	return nil
}

func qpsRound(ctx context.Context, cfg config, dir, queries string, up *upstream.Server, ps *procs, e engine, r int) (round, error) {
	var res round
	srv, err := startServer(ctx, ps, e, dir, fmt.Sprintf("r%d", r+1), up.Addr(), "", 0)
	if err != nil {
		return res, err
	}
	defer ps.stop(srv.proc, 5*time.Second)

	timeout := func(s int) (context.Context, context.CancelFunc) {
		return context.WithTimeout(ctx, time.Duration(s+30)*time.Second)
	}
	// Warm-up: every name once, gently enough that no query is dropped on
	// the way in, so the measured runs are all cache hits (the upstream
	// counts below show whether they were).
	wctx, cancel := timeout(cfg.seconds)
	_, err = dnsperf(wctx, srv.port, append([]string{"-d", queries, "-n", "1", "-l", strconv.Itoa(cfg.seconds + 20)}, cfg.warm...)...)
	cancel()
	if err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}

	u0 := up.Queries()
	c0, err := takeCPU(srv.proc.pid())
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	mctx, cancel := timeout(cfg.seconds)
	maxRes, err := dnsperf(mctx, srv.port, append([]string{"-d", queries, "-l", strconv.Itoa(cfg.seconds)}, cfg.client...)...)
	cancel()
	if err != nil {
		return res, fmt.Errorf("max QPS: %w", err)
	}
	u1 := up.Queries()
	c1, err := takeCPU(srv.proc.pid())
	if err != nil {
		return res, err
	}
	cpu := cpuUsage(c0, c1, time.Since(t0).Seconds())
	lctx, cancel := timeout(cfg.seconds)
	latRes, err := dnsperf(lctx, srv.port, append([]string{"-d", queries, "-l", strconv.Itoa(cfg.seconds),
		"-Q", strconv.Itoa(cfg.rate), "-v"}, cfg.client...)...)
	cancel()
	if err != nil {
		return res, fmt.Errorf("latency: %w", err)
	}
	u2 := up.Queries()
	c2, err := takeCPU(srv.proc.pid())
	if err != nil {
		return res, err
	}
	var latCPU time.Duration
	if answered := latRes.Sent - latRes.Lost; answered > 0 && c2.server >= c1.server {
		latCPU = time.Duration(float64(c2.server-c1.server) / clkTck / float64(answered) * float64(time.Second))
	}
	st, err := procStatus(srv.proc.pid())
	if err != nil {
		return res, err
	}

	lat := latRes.Latencies
	slices.Sort(lat)
	res = round{
		qps: maxRes.QPS, maxLost: maxRes.Lost,
		p50: percentile(lat, 0.50), p99: percentile(lat, 0.99), p999: percentile(lat, 0.999),
		latLost: latRes.Lost, latSent: latRes.Sent,
		upstreamMax: u1 - u0, upstreamLat: u2 - u1,
		peakRSS: st["VmHWM"],
		cpu:     cpu,
		latCPU:  latCPU,
	}
	if len(lat) == 0 {
		return res, fmt.Errorf("latency run printed no per-query lines")
	}
	return res, nil
}

// loadavg1 is the 1-minute load average: how busy the shared box was when a
// round started (2.0 is both cores).
func loadavg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// perCore is the max-QPS run's throughput per core the server used.
func perCore(r round) float64 {
	if r.cpu.server <= 0 {
		return 0
	}
	return r.qps / r.cpu.server
}
