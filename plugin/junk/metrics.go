package junk

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// answersCount counts the NXDOMAIN answers junk synthesized, per server and
// rule ("min_labels:internal.cloudapp.net.", "zone:reddog.microsoft.com.",
// "kubernetes:cluster.local."). Registered on the default registry, which
// CoreDNS's prometheus plugin serves: the one piece of package state, as in
// every CoreDNS plugin.
var answersCount = promauto.NewCounterVec(prometheus.CounterOpts{
	Namespace: "localdns",
	Subsystem: "junk",
	Name:      "answers_total",
	Help:      "Counter of NXDOMAIN answers synthesized for search-path junk, per rule.",
}, []string{"server", "rule"})
