package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// perfResult is what one dnsperf run reported.
type perfResult struct {
	QPS       float64         // "Queries per second"
	Sent      uint64          // "Queries sent"
	Completed uint64          // "Queries completed"
	Lost      uint64          // "Queries lost"
	Latencies []time.Duration // per-query latencies, only with -v
}

// parseDNSPerf reads dnsperf's output: the statistics block always, and with
// -v also the per-query lines "> RCODE name TYPE 0.000123" (latency in
// seconds with microsecond resolution).
func parseDNSPerf(r io.Reader) (perfResult, error) {
	var res perfResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	seenQPS := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "> ") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			s, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				// Timeouts are reported as "> T name TYPE" without a latency
				// in some versions; they are counted in Lost.
				continue
			}
			res.Latencies = append(res.Latencies, time.Duration(s*float64(time.Second)+0.5))
			continue
		}
		key, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		first := val
		if i := strings.IndexByte(val, ' '); i >= 0 {
			first = val[:i]
		}
		var err error
		switch key {
		case "Queries per second":
			res.QPS, err = strconv.ParseFloat(first, 64)
			seenQPS = true
		case "Queries sent":
			res.Sent, err = strconv.ParseUint(first, 10, 64)
		case "Queries completed":
			res.Completed, err = strconv.ParseUint(first, 10, 64)
		case "Queries lost":
			res.Lost, err = strconv.ParseUint(first, 10, 64)
		}
		if err != nil {
			return res, fmt.Errorf("dnsperf output %q: %w", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("read dnsperf output: %w", err)
	}
	if !seenQPS {
		return res, fmt.Errorf("dnsperf output has no statistics")
	}
	return res, nil
}

// percentile returns the q-quantile (0 < q <= 1) of sorted by the
// nearest-rank method; 0 for no samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// median of xs (mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianDur is median for durations.
func medianDur(ds []time.Duration) time.Duration {
	f := make([]float64, len(ds))
	for i, d := range ds {
		f[i] = float64(d)
	}
	return time.Duration(median(f))
}
