package netsetup

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/promreg"
)

// Values of the "what" label of localdns_reconcile_repairs_total.
const (
	RepairLink    = "link"
	RepairAddress = "address"
	RepairRules   = "rules"
)

// Values of the "step" label of localdns_setup_errors_total that this package
// uses. The daemon may count its own steps on the same counter (SetupError).
const (
	StepLink     = "link"
	StepAddress  = "address"
	StepRules    = "rules"
	StepState    = "state"
	StepTeardown = "teardown"
)

// Metrics counts what Reconcile repaired and which setup steps failed:
//
//	localdns_reconcile_repairs_total{what="link|address|rules"}
//	localdns_setup_errors_total{step="link|address|rules|state|teardown|..."}
//
// A nil *Metrics counts nothing.
type Metrics struct {
	repairs *prometheus.CounterVec
	errors  *prometheus.CounterVec
}

// NewMetrics registers the counters on reg. CoreDNS's prometheus plugin serves
// prometheus.DefaultRegisterer, so the daemon passes that; tests pass a fresh
// prometheus.NewRegistry(). Call it once per registerer: a second call on the
// same one returns the counters already registered.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		repairs: mustRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "localdns",
			Name:      "reconcile_repairs_total",
			Help:      "Counter of link, address and rule repairs done by the periodic reconcile.",
		}, []string{"what"})),
		errors: mustRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "localdns",
			Name:      "setup_errors_total",
			Help:      "Counter of failed network setup steps.",
		}, []string{"step"})),
	}
	// Export zeros so that rate() and absence alerts work from the start.
	for _, w := range []string{RepairLink, RepairAddress, RepairRules} {
		m.repairs.WithLabelValues(w)
	}
	for _, s := range []string{StepLink, StepAddress, StepRules, StepState, StepTeardown} {
		m.errors.WithLabelValues(s)
	}
	return m
}

// mustRegister registers c, or returns the collector already registered for
// it (a second daemon start in the same process); a conflicting metric of
// the same name is a programming error.
func mustRegister[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	c, err := promreg.Register(reg, c)
	if err != nil {
		panic(err)
	}
	return c
}

// SetupError counts one failure of step.
func (m *Metrics) SetupError(step string) {
	if m == nil {
		return
	}
	m.errors.WithLabelValues(step).Inc()
}

func (m *Metrics) repaired(r Repairs) {
	if m == nil {
		return
	}
	if r.Link > 0 {
		m.repairs.WithLabelValues(RepairLink).Add(float64(r.Link))
	}
	if r.Addresses > 0 {
		m.repairs.WithLabelValues(RepairAddress).Add(float64(r.Addresses))
	}
	if r.Rules > 0 {
		m.repairs.WithLabelValues(RepairRules).Add(float64(r.Rules))
	}
}
