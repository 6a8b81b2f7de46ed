// Package corefile renders a node profile into the Corefile localdns runs.
//
// The layout follows AKS LocalDNS, so an operator who knows its Corefile
// reads ours at a glance: one server block per zone and listener, each bound
// to its listener only, plus a probe zone answered by whoami on both. The
// differences are deliberate and documented in the README: our cache plugin
// (nodecache) instead of cache, our forwarder (upstream) with failover instead
// of forward, and our junk plugin (NXDOMAIN with SOA, counted) instead of
// template. Output is deterministic: zones are sorted, and the same profile
// and upstreams always give the same bytes (golden-tested).
package corefile

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/localdns/localdns/internal/config"
)

// ProbeZone is config.ProbeZone as a Corefile server block key (no
// trailing dot), answered by whoami on every listener.
var ProbeZone = strings.TrimSuffix(config.ProbeZone, ".")

// ReverseZones are added to every listener and go to cluster CoreDNS: it
// answers PTR for pod and service addresses and forwards the rest. A reverse
// zone the profile lists itself (say a corporate 168.192.in-addr.arpa to
// VnetDNS) goes where the profile says.
var ReverseZones = []string{"in-addr.arpa.", "ip6.arpa."}

// Listener names the two listeners in comments and nsid values.
type listener struct {
	name     string // "node" or "cluster"
	addr     netip.Addr
	nsid     string
	comment  string
	overrode map[string]config.Override
	vnet     bool // the node listener's map (vnetDNSOverrides)
}

// Render returns the Corefile for p with its upstreams resolved to ups.
func Render(p *config.Profile, ups config.Upstreams) (string, error) {
	if len(ups.Cluster) == 0 {
		return "", fmt.Errorf("render: no cluster DNS upstream")
	}
	if len(ups.VNet) == 0 {
		return "", fmt.Errorf("render: no VNet DNS upstream")
	}
	var b strings.Builder
	b.WriteString("# Rendered by localdns from its profile. Edit the profile, not this file.\n")
	if ups.VNetSource != "" {
		fmt.Fprintf(&b, "# VNet DNS servers discovered from %s.\n", ups.VNetSource)
	}
	fmt.Fprintf(&b, "\n# Probe zone for the watchdog, the self-probe and `localdns status`.\n")
	fmt.Fprintf(&b, "%s:%d {\n", ProbeZone, p.Port)
	fmt.Fprintf(&b, "    bind %s %s\n", p.NodeListener, p.ClusterListener)
	b.WriteString("    frontend\n")
	b.WriteString("    whoami\n}\n")

	listeners := []listener{
		{name: "node", addr: p.NodeListener, nsid: "localdns", overrode: p.VnetDNSOverrides, vnet: true,
			comment: "Node listener: the host, kubelet and dnsPolicy: Default pods (vnetDNSOverrides)."},
		{name: "cluster", addr: p.ClusterListener, nsid: "localdns-pod", overrode: p.KubeDNSOverrides,
			comment: "Cluster listener: ClusterFirst pods (kubeDNSOverrides)."},
	}
	for _, l := range listeners {
		fmt.Fprintf(&b, "\n# %s\n", l.comment)
		for _, zone := range zonesOf(p, l.overrode) {
			writeBlock(&b, p, ups, l, zone)
		}
	}
	return b.String(), nil
}

// zonesOf returns the listener's zones: its overrides plus the cluster
// domain and the reverse zones, which always exist and go to cluster CoreDNS.
func zonesOf(p *config.Profile, overrides map[string]config.Override) []string {
	seen := map[string]bool{}
	zones := config.Zones(overrides)
	for _, z := range zones {
		seen[z] = true
	}
	for _, z := range append([]string{clusterZone(p)}, ReverseZones...) {
		if !seen[z] {
			zones = append(zones, z)
		}
	}
	sortZones(zones)
	return zones
}

// sortZones orders the root first, then by name, so the file reads from the
// general to the specific.
func sortZones(zones []string) {
	for i := 1; i < len(zones); i++ {
		for j := i; j > 0 && less(zones[j], zones[j-1]); j-- {
			zones[j], zones[j-1] = zones[j-1], zones[j]
		}
	}
}

func less(a, b string) bool {
	if a == "." || b == "." {
		return a == "." && b != "."
	}
	return a < b
}

func clusterZone(p *config.Profile) string { return strings.ToLower(p.ClusterDomain) + "." }

// isClusterZone reports whether zone must be answered by cluster CoreDNS
// whatever the profile says: the cluster domain and below, and reverse zones.
func isClusterZone(p *config.Profile, zone string) bool {
	if config.IsSubdomain(zone, clusterZone(p)) {
		return true
	}
	for _, r := range ReverseZones {
		if config.IsSubdomain(zone, r) {
			return true
		}
	}
	return false
}

// settingsFor returns the override for zone; zones the renderer adds (the
// cluster domain, reverse zones) take the cluster domain's settings, or the
// defaults; either forwards to ClusterCoreDNS (validation sees to the first).
func settingsFor(p *config.Profile, overrides map[string]config.Override, zone string) config.Override {
	if o, ok := overrides[zone]; ok {
		return o
	}
	if o, ok := overrides[clusterZone(p)]; ok {
		return o
	}
	return config.DefaultOverride()
}

func writeBlock(b *strings.Builder, p *config.Profile, ups config.Upstreams, l listener, zone string) {
	o := settingsFor(p, l.overrode, zone)
	dest := o.ForwardDestination
	switch {
	case config.IsSubdomain(zone, clusterZone(p)):
		// Validation already forbids anything else; never render it.
		dest = config.DestinationClusterCoreDNS
	case l.vnet && zone == ".":
		dest = config.DestinationVnetDNS
	}
	fmt.Fprintf(b, "%s:%d {\n", zone, p.Port)
	b.WriteString("    errors\n")
	if o.QueryLogging == config.QueryLoggingLog {
		b.WriteString("    log\n")
	}
	fmt.Fprintf(b, "    bind %s\n", l.addr)
	b.WriteString("    frontend\n")
	fmt.Fprintf(b, "    nsid %s\n", l.nsid)
	fmt.Fprintf(b, "    ready %s\n", netip.AddrPortFrom(l.addr, p.ReadyPort))
	if p.Metrics != "" {
		fmt.Fprintf(b, "    prometheus %s\n", p.Metrics)
	}
	if zone == clusterZone(p) && p.JunkKubernetesSchema {
		b.WriteString("    junk {\n")
		fmt.Fprintf(b, "        kubernetes %s\n", clusterZone(p))
		b.WriteString("    }\n")
	}
	if zone == "." {
		b.WriteString("    junk {\n")
		b.WriteString("        min_labels internal.cloudapp.net 4\n")
		b.WriteString("        zone reddog.microsoft.com\n")
		b.WriteString("    }\n")
	}
	writeCache(b, p, o, pinsFor(p, l, zone))
	writeClientBudget(b, p)
	b.WriteString("    loop\n")
	writeUpstream(b, p, ups, zone, dest, o)
	b.WriteString("}\n")
}

// writeClientBudget writes the per-client upstream budget, right after the
// cache so that it sees only misses. It is written with a rate of 0 when
// limiting is off: the per-client accounting behind `localdns top` stays.
func writeClientBudget(b *strings.Builder, p *config.Profile) {
	if p.ClientBudget.QueriesPerSecond == 0 {
		b.WriteString("    clientbudget 0\n")
		return
	}
	fmt.Fprintf(b, "    clientbudget %d %d\n", p.ClientBudget.QueriesPerSecond, p.ClientBudget.EffectiveBurst())
}

// writeCache writes the block's cache. A stale window of 0 s serves nothing
// stale, so it is written as serve_stale off (nodecache refuses a window of
// 0). cacheDurationInSeconds 0 caches nothing: nodecache caps every TTL at
// 0; the stock cache refuses a TTL of 0, so the block has no cache.
func writeCache(b *strings.Builder, p *config.Profile, o config.Override, pins []string) {
	stale := o.ServeStale != config.ServeStaleDisable && o.ServeStaleDurationInSeconds > 0
	if p.Cache.Engine == config.CacheEngineCoreDNS {
		if o.CacheDurationInSeconds == 0 {
			return
		}
		fmt.Fprintf(b, "    cache %d {\n", o.CacheDurationInSeconds)
		b.WriteString("        success 9984\n")
		b.WriteString("        denial 9984\n")
		if stale {
			fmt.Fprintf(b, "        serve_stale %ds %s\n", o.ServeStaleDurationInSeconds, strings.ToLower(string(o.ServeStale)))
		}
		b.WriteString("        servfail 0\n")
		b.WriteString("    }\n")
		return
	}
	b.WriteString("    nodecache {\n")
	fmt.Fprintf(b, "        max_ttl %d\n", o.CacheDurationInSeconds)
	fmt.Fprintf(b, "        denial_ttl %d\n", o.CacheDurationInSeconds)
	if !stale {
		b.WriteString("        serve_stale off\n")
	} else {
		fmt.Fprintf(b, "        serve_stale %s %d\n", strings.ToLower(string(o.ServeStale)), o.ServeStaleDurationInSeconds)
	}
	fmt.Fprintf(b, "        memory %d\n", p.Cache.MaxMemory)
	if p.Cache.Snapshot != "" {
		fmt.Fprintf(b, "        snapshot %s\n", p.Cache.Snapshot)
	}
	if len(pins) > 0 {
		fmt.Fprintf(b, "        pin %s\n", strings.Join(pins, " "))
		fmt.Fprintf(b, "        pin_refresh %ds\n", p.HostsPluginRefreshIntervalInSeconds)
	}
	b.WriteString("    }\n")
}

// pinsFor returns the critical names (enableHostsPlugin) that the block of
// zone serves on listener l: those whose most specific zone there it is.
// AKS answers them from a hosts file in both root blocks; here they are
// pinned in the cache of whichever block a query for them reaches.
func pinsFor(p *config.Profile, l listener, zone string) []string {
	if !p.EnableHostsPlugin {
		return nil
	}
	zones := zonesOf(p, l.overrode)
	var out []string
	for _, name := range p.CriticalFQDNs {
		best := ""
		for _, z := range zones {
			if config.IsSubdomain(name, z) && len(z) > len(best) {
				best = z
			}
		}
		if best == zone {
			out = append(out, name)
		}
	}
	return out
}

func writeUpstream(b *strings.Builder, p *config.Profile, ups config.Upstreams, zone string, dest config.Destination, o config.Override) {
	to, group := ups.VNet, "vnet"
	if dest == config.DestinationClusterCoreDNS {
		to, group = ups.Cluster, "cluster"
	}
	b.WriteString("    upstream {\n")
	fmt.Fprintf(b, "        to %s\n", joinAddrs(to))
	if group == "cluster" && p.FailoverToVNetDNS && !isClusterZone(p, zone) {
		fmt.Fprintf(b, "        failover %s\n", joinAddrs(ups.VNet))
		fmt.Fprintf(b, "        never_failover %s %s\n", clusterZone(p), strings.Join(ReverseZones, " "))
		b.WriteString("        group_names cluster vnet\n")
	} else {
		fmt.Fprintf(b, "        group_names %s\n", group)
		if group == "cluster" && o.HealthCheck == nil {
			// Probe cluster CoreDNS with a name it answers itself: probing
			// "." would make its health depend on VNet DNS behind it.
			fmt.Fprintf(b, "        health_check 0.5s domain %s\n", clusterZone(p))
		}
	}
	if hc := o.HealthCheck; hc != nil {
		// AKS's healthCheck: duration is the probe interval, noRec clears
		// RD, domain the name probed; without a domain, cluster CoreDNS is
		// still probed with a name it answers itself.
		fmt.Fprintf(b, "        health_check %s", hc.Duration)
		if hc.NoRec {
			b.WriteString(" no_rec")
		}
		switch {
		case hc.Domain != "":
			fmt.Fprintf(b, " domain %s", hc.Domain)
		case group == "cluster":
			fmt.Fprintf(b, " domain %s", clusterZone(p))
		}
		b.WriteString("\n")
	}
	if ff := o.FailfastAllUnhealthyUpstreams; ff != nil && !*ff {
		// AKS's failfastAllUnhealthyUpstreams: false, as forward does
		// without it: try the upstreams even when all are marked down.
		b.WriteString("        try_unhealthy\n")
	}
	if o.Protocol == config.ProtocolForceTCP {
		b.WriteString("        protocol force_tcp\n")
	} else {
		b.WriteString("        protocol prefer_udp\n")
	}
	fmt.Fprintf(b, "        policy %s\n", policyName(o.ForwardPolicy))
	// Always written: 0 means no limit, as in forward, and leaving it out
	// would give upstream's default of 1000.
	fmt.Fprintf(b, "        max_concurrent %d\n", o.MaxConcurrent)
	b.WriteString("    }\n")
}

func policyName(fp config.ForwardPolicy) string {
	switch fp {
	case config.PolicyRoundRobin:
		return "round_robin"
	case config.PolicyRandom:
		return "random"
	default:
		return "sequential"
	}
}

func joinAddrs(ups []config.Upstream) string {
	s := make([]string, len(ups))
	for i, u := range ups {
		s[i] = u.String()
	}
	return strings.Join(s, " ")
}
