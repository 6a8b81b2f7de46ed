package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/test/bench/upstream"
)

// memResult is one engine's memory benchmark.
type memResult struct {
	name      string
	startRSS  int64
	peakRSS   int64
	endRSS    int64
	sent      uint64
	lost      uint64
	upstream  uint64
	elapsed   time.Duration
	metrics   map[string]float64
	scrapeErr error
}

var memMetrics = []string{
	"localdns_cache_size_bytes",
	"localdns_cache_budget_bytes",
	"localdns_cache_entries",
	"localdns_cache_evictions_total",
	"coredns_cache_entries",
	"coredns_cache_evictions_total",
	"go_memstats_heap_inuse_bytes",
}

func memBench(ctx context.Context, cfg config, dir string, up *upstream.Server, ps *procs) error {
	names := dir + "/mem-names"
	if err := writeNames(names, "m%07d.pod-churn.bench.example.", cfg.memNames); err != nil {
		return err
	}
	fmt.Printf("workload: %d unique A names, once each, at %d QPS, capped at %d s\n", cfg.memNames, cfg.memRate, cfg.memSecs)

	cfg.nodecache = fmt.Sprintf("nodecache {\n\t\tmax_ttl 3600\n\t\tdenial_ttl 3600\n\t\tserve_stale immediate 3600\n\t\tmemory %d\n\t}", cfg.memBudget)
	var results []memResult
	for _, n := range cfg.memEngines {
		e, err := cfg.engine(n)
		if err != nil {
			return err
		}
		mport, err := freePort()
		if err != nil {
			return err
		}
		fmt.Printf("engine %s: %s\n  Corefile: %s", e.name, e.desc, corefile(0, up.Addr(), e, fmt.Sprintf("prometheus 127.0.0.1:%d", mport)))
		res, err := memRun(ctx, cfg, dir, names, up, ps, e, mport)
		if err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		results = append(results, res)
	}

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "engine\tRSS at start\tpeak RSS (VmHWM)\tRSS at end\tcache bytes\tbudget\tentries\tevictions\theap in use\tsent\tlost\tupstream\ttime\t\n")
	for _, r := range results {
		m := r.metrics
		entries := m["localdns_cache_entries"] + m["coredns_cache_entries"]
		evictions := m["localdns_cache_evictions_total"] + m["coredns_cache_evictions_total"]
		cacheBytes, budget := "n/a", "n/a"
		if v, ok := m["localdns_cache_size_bytes"]; ok {
			cacheBytes = mib(int64(v))
		}
		if v, ok := m["localdns_cache_budget_bytes"]; ok {
			budget = mib(int64(v))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%s\t%d\t%d\t%d\t%s\t\n", r.name,
			mib(r.startRSS), mib(r.peakRSS), mib(r.endRSS), cacheBytes, budget, entries, evictions,
			mib(int64(m["go_memstats_heap_inuse_bytes"])), r.sent, r.lost, r.upstream, r.elapsed.Round(time.Second))
	}
	tw.Flush()
	for _, r := range results {
		if r.scrapeErr != nil {
			fmt.Printf("%s: metrics scrape failed: %v\n", r.name, r.scrapeErr)
		}
	}
	return nil
}

func memRun(ctx context.Context, cfg config, dir, names string, up *upstream.Server, ps *procs, e engine, mport int) (memResult, error) {
	res := memResult{name: e.name}
	srv, err := startServer(ctx, ps, e, dir, "mem", up.Addr(), fmt.Sprintf("prometheus 127.0.0.1:%d", mport), 0)
	if err != nil {
		return res, err
	}
	defer ps.stop(srv.proc, 5*time.Second)
	st, err := procStatus(srv.proc.pid())
	if err != nil {
		return res, err
	}
	res.startRSS = st["VmRSS"]

	u0 := up.Queries()
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.memSecs+30)*time.Second)
	pr, err := dnsperf(pctx, srv.port, append([]string{"-d", names, "-n", "1", "-l", strconv.Itoa(cfg.memSecs),
		"-Q", strconv.Itoa(cfg.memRate)}, cfg.client...)...)
	cancel()
	if err != nil {
		return res, err
	}
	res.elapsed = time.Since(start)
	res.sent, res.lost, res.upstream = pr.Sent, pr.Lost, up.Queries()-u0

	if st, err = procStatus(srv.proc.pid()); err != nil {
		return res, err
	}
	res.peakRSS, res.endRSS = st["VmHWM"], st["VmRSS"]
	res.metrics, res.scrapeErr = scrapeMetrics(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", mport), memMetrics...)
	return res, nil
}
