package config

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Validate checks a profile built in code (Parse already validates).
func (p *Profile) Validate() error {
	if ps := p.validate(); len(ps) > 0 {
		return ps
	}
	return nil
}

// validate applies AKS's rules and ours. It assumes the decoder already
// rejected malformed values, so it checks relations between fields.
func (p *Profile) validate() Problems {
	var ps Problems
	add := func(path, value, reason string, args ...any) {
		ps = append(ps, Problem{Path: path, Value: value, Reason: fmt.Sprintf(reason, args...)})
	}
	if p.NodeListener == p.ClusterListener {
		add("listeners.cluster", p.ClusterListener.String(), "must differ from listeners.node")
	}
	if p.NodeListener.Is4() != p.ClusterListener.Is4() {
		add("listeners.cluster", p.ClusterListener.String(), "must be the same address family as listeners.node")
	}
	if p.ReadyPort == p.Port {
		add("readyPort", fmt.Sprint(p.ReadyPort), "must differ from port")
	}
	listeners := []netip.AddrPort{
		netip.AddrPortFrom(p.NodeListener, p.Port),
		netip.AddrPortFrom(p.ClusterListener, p.Port),
	}
	checkLoop := func(path string, ups []Upstream) {
		for i, u := range ups {
			for _, l := range listeners {
				if u == l {
					add(fmt.Sprintf("%s[%d]", path, i), u.String(), "is a localdns listener: forwarding to it would loop")
					break
				}
			}
		}
	}
	if !p.ClusterDNSAuto && len(p.ClusterDNS) == 0 {
		add("clusterDNS", "", `must list at least one server, or be "auto"`)
	}
	checkLoop("clusterDNS", p.ClusterDNS)
	if !p.VNetDNSAuto && len(p.VNetDNS) == 0 {
		add("vnetDNS", "", `must list at least one server, or be "auto"`)
	}
	checkLoop("vnetDNS", p.VNetDNS)
	if p.VNetDNSAuto && len(p.ResolvConf) == 0 {
		add("resolvConf", "", `must name at least one file when vnetDNS is "auto"`)
	}
	clusterDomainOK := true
	if _, err := NormalizeZone(p.ClusterDomain); err != nil || p.ClusterDomain == "." || p.ClusterDomain == "" {
		add("clusterDomain", p.ClusterDomain, "must be a DNS zone below the root")
		clusterDomainOK = false
	}
	if p.Metrics != "" {
		if ap, err := netip.ParseAddrPort(p.Metrics); err == nil {
			// Metrics, ready and DNS over TCP all listen on TCP; an
			// unspecified address takes the port on the listeners too.
			for _, l := range listeners {
				if ap.Addr() != l.Addr() && !ap.Addr().IsUnspecified() {
					continue
				}
				switch ap.Port() {
				case p.ReadyPort:
					add("metrics", p.Metrics, "collides with the ready endpoint on %s", netip.AddrPortFrom(l.Addr(), p.ReadyPort))
				case p.Port:
					add("metrics", p.Metrics, "collides with DNS over TCP on %s", l)
				}
			}
		}
	}
	if p.HostResolver.Redirect && !p.Network.Manage {
		add("hostResolver.redirect", "true", "needs network.manage: true (it changes the host's resolver configuration)")
	}
	if p.Health != "" && p.Health == p.Metrics {
		add("health", p.Health, "must differ from metrics")
	}
	if p.Cache.Engine == CacheEngineLocalDNS && p.Cache.MaxMemory < 1<<20 {
		add("cache.maxMemory", fmt.Sprint(p.Cache.MaxMemory), "must be at least 1Mi")
	}
	if p.CPULimitInMilliCores < MinCPULimitInMilliCores || p.CPULimitInMilliCores > MaxCPULimitInMilliCores {
		add("cpuLimitInMilliCores", fmt.Sprint(p.CPULimitInMilliCores), "must be between %d and %d", MinCPULimitInMilliCores, MaxCPULimitInMilliCores)
	}
	if p.MemoryLimitInMB < MinMemoryLimitInMB || p.MemoryLimitInMB > MaxMemoryLimitInMB {
		add("memoryLimitInMB", fmt.Sprint(p.MemoryLimitInMB), "must be between %d and %d", MinMemoryLimitInMB, MaxMemoryLimitInMB)
	} else if fit := CacheBudget(p.MemoryLimitInMB); p.Cache.MaxMemory > fit {
		add("cache.maxMemory", fmt.Sprintf("%dMi", p.Cache.MaxMemory>>20),
			"does not fit in memoryLimitInMB %d (at most %dMi there): raise memoryLimitInMB to %d, or leave cache.maxMemory out to derive it",
			p.MemoryLimitInMB, fit>>20, MemoryLimitInMBFor(p.Cache.MaxMemory))
	}
	if p.EnableHostsPlugin && p.Cache.Engine != CacheEngineLocalDNS {
		add("enableHostsPlugin", "true", "needs cache.engine localdns (critical names are pinned in its cache)")
	}
	if p.HostsPluginRefreshIntervalInSeconds < MinHostsPluginRefreshIntervalInSeconds || p.HostsPluginRefreshIntervalInSeconds > MaxHostsPluginRefreshIntervalInSeconds {
		add("hostsPluginRefreshIntervalInSeconds", fmt.Sprint(p.HostsPluginRefreshIntervalInSeconds), "must be between %d and %d",
			MinHostsPluginRefreshIntervalInSeconds, MaxHostsPluginRefreshIntervalInSeconds)
	}
	if p.Cache.Snapshot != "" && !strings.HasPrefix(p.Cache.Snapshot, "/") {
		add("cache.snapshot", p.Cache.Snapshot, "must be an absolute path")
	}

	clusterZone := strings.ToLower(p.ClusterDomain) + "."
	// AKS forbids cluster.local to VnetDNS whatever the cluster domain; a
	// custom cluster domain is held to the same rule.
	clusterZones := []string{"cluster.local."}
	if clusterDomainOK && clusterZone != "cluster.local." {
		clusterZones = append(clusterZones, clusterZone)
	}
	checkOverrides := func(name string, overrides map[string]Override, vnet bool) {
		if len(overrides) == 0 {
			add(name, "", `must have at least the zone "."`)
			return
		}
		if _, ok := overrides["."]; !ok {
			add(name, "", `must have the root zone "." (where every name not matched by another zone goes)`)
		}
		for _, zone := range slices.Sorted(maps.Keys(overrides)) {
			o := overrides[zone]
			path := join(name, zone)
			if IsSubdomain(zone, ProbeZone) {
				add(path, zone, "is reserved: localdns answers %s itself for its probes", strings.TrimSuffix(ProbeZone, "."))
			}
			if vnet && zone == "." && o.ForwardDestination == DestinationClusterCoreDNS {
				add(path+".forwardDestination", string(o.ForwardDestination), `the node listener's root zone "." may not forward to ClusterCoreDNS`)
			}
			for _, cz := range clusterZones {
				if IsSubdomain(zone, cz) && o.ForwardDestination == DestinationVnetDNS {
					add(path+".forwardDestination", string(o.ForwardDestination), "names under the cluster domain %s may never forward to VnetDNS (it would answer NXDOMAIN)", strings.TrimSuffix(cz, "."))
					break
				}
			}
			if o.Protocol == ProtocolForceTCP && o.ServeStale == ServeStaleVerify {
				add(path+".protocol", string(o.Protocol), "ForceTCP cannot be combined with serveStale Verify")
			}
		}
	}
	checkOverrides("vnetDNSOverrides", p.VnetDNSOverrides, true)
	checkOverrides("kubeDNSOverrides", p.KubeDNSOverrides, false)
	return ps
}

// ProbeZone is the zone every listener answers itself (CoreDNS's whoami,
// rendered by internal/corefile) for the self-probe, the watchdog and
// `localdns probe` (internal/sdnotify). A profile may not override it.
const ProbeZone = "health-check.localdns.local."

// IsSubdomain reports whether zone is parent or below it; both are
// normalised (lower case, trailing dot).
func IsSubdomain(zone, parent string) bool {
	if parent == "." {
		return true
	}
	return zone == parent || strings.HasSuffix(zone, "."+parent)
}

// Zones returns the override zones in a stable order.
func Zones(m map[string]Override) []string { return slices.Sorted(maps.Keys(m)) }
