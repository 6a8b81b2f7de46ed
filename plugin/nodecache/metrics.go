package nodecache

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are registered with the default registerer, which CoreDNS's
// prometheus plugin serves. The store-wide gauges read the shared store.
var (
	hitsTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_hits_total",
		Help: "Answers served fresh from the node cache.",
	}, []string{"server"})
	missesTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_misses_total",
		Help: "Queries the node cache could not answer and sent upstream.",
	}, []string{"server"})
	staleTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_stale_answers_total",
		Help: "Expired answers served per RFC 8767 serve-stale.",
	}, []string{"server"})
	coalescedTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_coalesced_misses_total",
		Help: "Misses that waited for an identical in-flight upstream query instead of sending their own.",
	}, []string{"server"})
	prefetchesTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_prefetches_total",
		Help: "Hot entries refreshed before they expired.",
	}, []string{"server"})
	refreshFailuresTotal = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_refresh_failures_total",
		Help: "Background or verify refreshes that got no usable answer; the stale entry was kept.",
	}, []string{"server"})
	pinRefreshes = promauto.With(prometheus.DefaultRegisterer).NewCounterVec(prometheus.CounterOpts{
		Name: "localdns_cache_pin_refreshes_total",
		Help: "Pinned names (and types) refreshed from the upstreams on the pin_refresh interval.",
	}, []string{"server"})
	evictions = promauto.With(prometheus.DefaultRegisterer).NewCounter(prometheus.CounterOpts{
		Name: "localdns_cache_evictions_total",
		Help: "Entries evicted to stay within the memory budget.",
	})
	snapshotSaved = promauto.With(prometheus.DefaultRegisterer).NewGauge(prometheus.GaugeOpts{
		Name: "localdns_cache_snapshot_saved_entries",
		Help: "Entries written by the last successful snapshot.",
	})
	snapshotRestored = promauto.With(prometheus.DefaultRegisterer).NewGauge(prometheus.GaugeOpts{
		Name: "localdns_cache_snapshot_restored_entries",
		Help: "Entries restored from the snapshot at start.",
	})
	snapshotTimestamp = promauto.With(prometheus.DefaultRegisterer).NewGauge(prometheus.GaugeOpts{
		Name: "localdns_cache_snapshot_timestamp_seconds",
		Help: "Unix time of the last successful snapshot save.",
	})
	_ = promauto.With(prometheus.DefaultRegisterer).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "localdns_cache_entries",
		Help: "Entries in the node cache (all server blocks).",
	}, func() float64 { return float64(sharedOrEmpty().Len()) })
	_ = promauto.With(prometheus.DefaultRegisterer).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "localdns_cache_size_bytes",
		Help: "Accounted memory of the node cache in bytes.",
	}, func() float64 { return float64(sharedOrEmpty().Bytes()) })
	_ = promauto.With(prometheus.DefaultRegisterer).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "localdns_cache_budget_bytes",
		Help: "Memory budget of the node cache in bytes.",
	}, func() float64 { return float64(sharedOrEmpty().Budget()) })
)

// counters are one server's counters, resolved once instead of per query.
type counters struct {
	server                                                     string
	hits, misses, stale, coalesced, prefetches, refreshFailure prometheus.Counter
}

func newCounters(server string) *counters {
	return &counters{
		server:         server,
		hits:           hitsTotal.WithLabelValues(server),
		misses:         missesTotal.WithLabelValues(server),
		stale:          staleTotal.WithLabelValues(server),
		coalesced:      coalescedTotal.WithLabelValues(server),
		prefetches:     prefetchesTotal.WithLabelValues(server),
		refreshFailure: refreshFailuresTotal.WithLabelValues(server),
	}
}
