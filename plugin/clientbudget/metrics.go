package clientbudget

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// No metric has a client label: a node's clients come and go, and a series
// per address would grow without bound. Per-client counts are in Top.
var (
	limited = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "localdns",
		Subsystem: pluginName,
		Name:      "limited_total",
		Help:      "Queries that missed the cache from a client over its upstream query budget, not sent upstream.",
	}, []string{"server"})
	upstreamQueries = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "localdns",
		Subsystem: pluginName,
		Name:      "upstream_queries_total",
		Help:      "Queries let through to the forwarder, by origin: client (a miss) or cache (a refresh or prefetch).",
	}, []string{"server", "origin"})
)
