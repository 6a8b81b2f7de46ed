package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/netsetup"
	"github.com/localdns/localdns/internal/promreg"
)

// NetworkConfig is what netsetup installs for a profile.
func NetworkConfig(p *config.Profile, m *netsetup.Metrics) netsetup.Config {
	return netsetup.Config{
		LinkName:     p.Network.LinkName,
		Addrs:        []netip.Addr{p.NodeListener, p.ClusterListener},
		Port:         p.Port,
		Table:        "localdns",
		ReplyNotrack: p.Network.ReplyNotrack,
		StateDir:     p.Network.StateDir,
		Metrics:      m,
	}
}

// registerBuildInfo exports localdns_build_info{version,coredns_version,goversion} 1.
func registerBuildInfo(version string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "localdns_build_info",
		Help: "A metric with a constant '1' value labeled by the localdns, CoreDNS and Go versions.",
		ConstLabels: prometheus.Labels{
			"version":         version,
			"coredns_version": moduleVersion("github.com/coredns/coredns"),
			"goversion":       runtime.Version(),
		},
	})
	g.Set(1)
	if _, err := promreg.Register(prometheus.DefaultRegisterer, g); err != nil {
		slog.Warn("build info metric", "err", err)
	}
}

// moduleVersion reads a dependency's version from the build info.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return strings.TrimPrefix(m.Version, "v")
			}
		}
	}
	return "unknown"
}

// ModuleVersion is the version of a module compiled into this binary.
func ModuleVersion(path string) string { return moduleVersion(path) }

// reconcileLoop re-checks addresses and rules every interval and puts back
// what is missing, until ctx ends.
func (d *Daemon) reconcileLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := netsetup.Reconcile(ctx, d.net)
		if err != nil {
			d.log.Error("reconcile failed", "err", err)
			continue
		}
		if rep.Total() > 0 {
			d.log.Warn("reconcile repaired the node setup", "repairs", rep.String())
		}
	}
}
