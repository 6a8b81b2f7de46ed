package upstream

import (
	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const (
	namespace = "localdns"
	subsystem = "upstream"
)

// Metrics on the default registry, which CoreDNS's prometheus plugin serves.
var (
	healthy = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "healthy",
		Help:      "Whether the upstream passes its health checks (1) or is down (0).",
	}, []string{"group", "upstream"})

	requestDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "request_duration_seconds",
		Buckets:   plugin.TimeBuckets,
		Help:      "Time from sending a query to an upstream to its answer, by rcode; rcode=\"error\" for I/O errors and timeouts.",
	}, []string{"group", "upstream", "rcode"})

	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "requests_total",
		Help:      "Queries sent to the upstream, retries included.",
	}, []string{"group", "upstream"})

	failovers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "failovers_total",
		Help:      "Queries sent to the failover group because the route group could not answer.",
	}, []string{"from", "to"})

	fastFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "fast_failures_total",
		Help:      "Queries answered SERVFAIL at once because the group had no healthy upstream.",
	}, []string{"group"})

	unmatchedReplies = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "unmatched_replies_total",
		Help:      "UDP replies dropped because no query in flight on their socket had their ID and question (late, after the query gave up, or forged).",
	}, []string{"group", "upstream"})

	maxConcurrentRejects = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: namespace,
		Subsystem: subsystem,
		Name:      "max_concurrent_rejects_total",
		Help:      "Queries refused because max_concurrent queries were in flight.",
	})
)
