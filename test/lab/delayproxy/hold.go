package delayproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync/atomic"
	"time"
)

const (
	holdBucket  = 10 * time.Microsecond
	holdBuckets = int(100 * time.Millisecond / holdBucket) // plus one overflow bucket
)

// Histogram records durations in fixed 10 µs buckets up to 100 ms (and one
// overflow bucket) with atomic counters only, so recording on the send path
// costs a few atomic adds. Its zero value is ready to use.
type Histogram struct {
	buckets [holdBuckets + 1]atomic.Uint64
	count   atomic.Uint64
	sum     atomic.Uint64 // nanoseconds
	max     atomic.Uint64 // nanoseconds
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	d = max(d, 0)
	h.buckets[min(int(d/holdBucket), holdBuckets)].Add(1)
	h.count.Add(1)
	h.sum.Add(uint64(d))
	for {
		m := h.max.Load()
		if uint64(d) <= m || h.max.CompareAndSwap(m, uint64(d)) {
			break
		}
	}
}

// HoldStats summarises the actual hold of the queries: the time from a
// query's arrival to the moment it was passed on (or answered). Percentiles
// are the upper edge of their 10 µs bucket, capped at the maximum.
type HoldStats struct {
	Count      uint64  `json:"count"`
	MeanUS     float64 `json:"mean_us"`
	P50US      float64 `json:"p50_us"`
	P99US      float64 `json:"p99_us"`
	MaxUS      float64 `json:"max_us"`
	Configured string  `json:"configured"`
}

func (s HoldStats) String() string {
	return fmt.Sprintf("%d queries held p50 %.0fµs p99 %.0fµs max %.0fµs mean %.0fµs (configured %s)",
		s.Count, s.P50US, s.P99US, s.MaxUS, s.MeanUS, s.Configured)
}

// Stats summarises what was recorded so far. Configured is left empty.
func (h *Histogram) Stats() HoldStats {
	var counts [holdBuckets + 1]uint64
	var n uint64
	for i := range h.buckets {
		counts[i] = h.buckets[i].Load()
		n += counts[i]
	}
	maxNS := h.max.Load()
	st := HoldStats{Count: n, MaxUS: us(time.Duration(maxNS))}
	if n == 0 {
		return st
	}
	st.MeanUS = us(time.Duration(h.sum.Load() / max(h.count.Load(), 1)))
	st.P50US = min(us(quantile(counts[:], n, 0.50)), st.MaxUS)
	st.P99US = min(us(quantile(counts[:], n, 0.99)), st.MaxUS)
	return st
}

// quantile returns the upper edge of the bucket holding the nearest-rank q
// quantile; the overflow bucket has no edge and gives +Inf.
func quantile(counts []uint64, n uint64, q float64) time.Duration {
	rank := uint64(math.Ceil(q * float64(n)))
	var cum uint64
	for i, c := range counts {
		cum += c
		if cum >= max(rank, 1) {
			if i == holdBuckets {
				return time.Duration(math.MaxInt64)
			}
			return time.Duration(i+1) * holdBucket
		}
	}
	return time.Duration(math.MaxInt64)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// HoldHandler serves stats() as the JSON document of HoldStats; the lab
// mounts it at /hold.
func HoldHandler(stats func() HoldStats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(stats())
	})
}

// ParseHold parses the /hold document.
func ParseHold(body []byte) (HoldStats, error) {
	var st HoldStats
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("hold stats: %w", err)
	}
	return st, nil
}

// FetchHold gets and parses the /hold document at url
// (http://ADDR/hold).
func FetchHold(ctx context.Context, url string) (HoldStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return HoldStats{}, fmt.Errorf("hold stats %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return HoldStats{}, fmt.Errorf("hold stats %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return HoldStats{}, fmt.Errorf("hold stats %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return HoldStats{}, fmt.Errorf("hold stats %s: %s", url, resp.Status)
	}
	return ParseHold(body)
}
