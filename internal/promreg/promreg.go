// Package promreg registers a collector, or returns the one of the same
// description already registered. localdns's own components create their
// metrics when the daemon starts (they hold no package-level metrics); a
// second start in the same process (tests, or a future in-process restart)
// must keep counting on the collectors Prometheus already serves rather
// than panic on the duplicate or count on unregistered copies.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns it, or returns the collector that
// is already registered for the same metric.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}
