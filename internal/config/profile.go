// Package config is the localdns node profile: its model, its defaults (AKS
// localDNSProfile defaults plus node fields), a strict decoder that accepts
// YAML or JSON in either AKS key spelling, and validation that reports every
// problem with the field path, the bad value and the reason.
//
// The decoder is hand-written over a generic YAML tree instead of
// encoding/json struct tags because a node operator needs errors that name
// the full field path (vnetDNSOverrides.".".serveStale) and needs to see all
// problems of a profile at once, not the first one.
package config

import (
	"net/netip"
	"time"
)

// Mode is the AKS localDNSProfile mode.
type Mode string

// Modes, as AKS spells them.
const (
	ModeRequired  Mode = "Required"
	ModePreferred Mode = "Preferred"
	ModeDisabled  Mode = "Disabled"
)

// QueryLogging selects errors-only or per-query logging for a zone.
type QueryLogging string

// QueryLogging values.
const (
	QueryLoggingError QueryLogging = "Error"
	QueryLoggingLog   QueryLogging = "Log"
)

// Protocol selects the transport to the upstream.
type Protocol string

// Protocol values.
const (
	ProtocolPreferUDP Protocol = "PreferUDP"
	ProtocolForceTCP  Protocol = "ForceTCP"
)

// Destination selects which upstream group a zone forwards to.
type Destination string

// Destination values.
const (
	DestinationClusterCoreDNS Destination = "ClusterCoreDNS"
	DestinationVnetDNS        Destination = "VnetDNS"
)

// ForwardPolicy selects how the forwarder picks among several upstreams.
type ForwardPolicy string

// ForwardPolicy values.
const (
	PolicySequential ForwardPolicy = "Sequential"
	PolicyRoundRobin ForwardPolicy = "RoundRobin"
	PolicyRandom     ForwardPolicy = "Random"
)

// ServeStale selects the RFC 8767 behaviour for expired entries.
type ServeStale string

// ServeStale values.
const (
	ServeStaleVerify    ServeStale = "Verify"
	ServeStaleImmediate ServeStale = "Immediate"
	ServeStaleDisable   ServeStale = "Disable"
)

// CacheEngine selects which cache plugin the rendered Corefile uses.
type CacheEngine string

// CacheEngine values.
const (
	CacheEngineLocalDNS CacheEngine = "localdns"
	CacheEngineCoreDNS  CacheEngine = "coredns"
)

// Override is one zone's settings, as in AKS's LocalDNSOverride.
type Override struct {
	QueryLogging                QueryLogging
	Protocol                    Protocol
	ForwardDestination          Destination
	ForwardPolicy               ForwardPolicy
	MaxConcurrent               int
	CacheDurationInSeconds      int
	ServeStaleDurationInSeconds int
	ServeStale                  ServeStale

	// HealthCheck is AKS's healthCheck: how the zone's upstreams are
	// probed (upstream's health_check). Nil keeps localdns's probes.
	HealthCheck *HealthCheck
	// FailfastAllUnhealthyUpstreams is AKS's field: true answers SERVFAIL
	// at once when every upstream a name may use is down; false tries them
	// anyway (forward's default). Nil keeps localdns's default, which is to
	// fail fast (upstream's README: a cache above serves stale instead).
	FailfastAllUnhealthyUpstreams *bool
}

// HealthCheck is AKS's per-override healthCheck.
type HealthCheck struct {
	// Duration is the probe interval.
	Duration time.Duration
	// NoRec clears the RD bit of the probe.
	NoRec bool
	// Domain is the name probed (NS); empty keeps localdns's choice (the
	// cluster domain for cluster CoreDNS, "." for VNet DNS).
	Domain string
}

// Health check interval bounds.
const (
	MinHealthCheckDuration = 100 * time.Millisecond
	MaxHealthCheckDuration = time.Hour
)

// Upstream is one DNS server address.
type Upstream = netip.AddrPort

// Profile is the whole node profile.
type Profile struct {
	Mode Mode

	// NodeListener serves the host and dnsPolicy: Default pods (VnetDNS traffic).
	NodeListener netip.Addr
	// ClusterListener serves ClusterFirst pods (KubeDNS traffic).
	ClusterListener netip.Addr
	// Port is the DNS port of both listeners.
	Port uint16
	// ReadyPort is the port of CoreDNS's ready endpoint on each listener address.
	ReadyPort uint16

	// ClusterDNS are the cluster CoreDNS service addresses. ClusterDNSAuto
	// means "same as VNet DNS" (for laptops and rigs without a cluster).
	ClusterDNS     []Upstream
	ClusterDNSAuto bool
	ClusterDomain  string

	// VNetDNS are the VNet DNS servers; when VNetDNSAuto is set they are
	// discovered from ResolvConf at start (see DiscoverVNetDNS).
	VNetDNS     []Upstream
	VNetDNSAuto bool
	// ResolvConf lists the files auto discovery reads, first existing wins.
	ResolvConf []string

	// FailoverToVNetDNS sends names outside the cluster domain and the
	// reverse zones to VNet DNS while every cluster CoreDNS upstream is down.
	FailoverToVNetDNS bool

	Network Network

	// HostResolver points the node's own resolver at the node listener.
	HostResolver HostResolver

	// Metrics is the Prometheus listen address (host:port).
	Metrics string
	// Health is where localdns serves /health, /ready and /status (ip:port).
	Health string

	Cache Cache

	// ClientBudget limits each client's upstream queries (cache misses).
	ClientBudget ClientBudget

	// CPULimitInMilliCores and MemoryLimitInMB are AKS's node-level limits
	// for localdns: the slice's CPUQuota and MemoryMax (see resources.go).
	// The Go memory limit and, unless cache.maxMemory is given, the cache
	// budget follow MemoryLimitInMB.
	CPULimitInMilliCores int
	MemoryLimitInMB      int

	// EnableHostsPlugin, CriticalFQDNs and HostsPluginRefreshIntervalInSeconds
	// are AKS's names that must resolve whatever happens upstream. AKS
	// keeps them in a hosts file; localdns pins them in its cache
	// (nodecache pin): never evicted, refreshed every interval, served
	// stale while the upstreams fail. CriticalFQDNs are validated even
	// when EnableHostsPlugin is false, and then not used.
	EnableHostsPlugin                   bool
	CriticalFQDNs                       []string // normalised: lower case, trailing dot
	HostsPluginRefreshIntervalInSeconds int

	// JunkKubernetesSchema answers NXDOMAIN locally for names under the
	// cluster domain that the Kubernetes DNS schema cannot produce (opt-in:
	// wrong for clusters whose CoreDNS serves other names there).
	JunkKubernetesSchema bool

	// VnetDNSOverrides and KubeDNSOverrides are keyed by zone, normalised to
	// lower case with a trailing dot ("." , "cluster.local.").
	VnetDNSOverrides map[string]Override
	KubeDNSOverrides map[string]Override
}

// Network holds the node-integration switches.
type Network struct {
	// Manage: create the link, addresses and conntrack-bypass rules. False
	// touches nothing on the machine (unprivileged runs, loopback tests).
	Manage bool
	// ReconcileInterval is how often addresses and rules are re-checked.
	ReconcileInterval time.Duration
	// ReplyNotrack also exempts our replies from conntrack. Switch it off
	// only for a CNI that drops untracked replies (see internal/netsetup).
	ReplyNotrack bool
	// LinkName is the dummy link that carries the listener addresses.
	LinkName string
	// StateDir records what localdns installed, so teardown after a crash
	// removes exactly that.
	StateDir string
	// Fallback: while localdns does not serve (stopped, crash-looping, given
	// up, Preferred/Disabled mode not running), queries to the listeners go
	// straight to the upstreams (nftables DNAT), so pods never lose DNS.
	Fallback bool
	// FallbackFile keeps the last valid profile's fallback (listeners and
	// upstreams), for a start whose profile is broken. Persistent storage:
	// it must survive a reboot.
	FallbackFile string
}

// HostResolver says whether and where the host's resolver is redirected to
// the node listener (a systemd-networkd or systemd-resolved drop-in, removed
// on stop). Off by default.
type HostResolver struct {
	Redirect bool
	// Interface overrides the default-route interface whose networkd
	// configuration gets the drop-in.
	Interface string
}

// Cache holds the process-wide cache settings.
type Cache struct {
	Engine CacheEngine
	// MaxMemory is the byte budget of the whole cache, all listeners and
	// zones. Parse derives it from MemoryLimitInMB (CacheBudget) unless the
	// profile gives it.
	MaxMemory int64
	// Snapshot is where the cache is persisted across restarts; empty disables.
	Snapshot string
}

// ClientBudget is each client's (pod's) budget of upstream queries: cache
// misses beyond it get a stale answer or SERVFAIL instead of going to
// cluster CoreDNS or VNet DNS. Cache hits are never limited.
type ClientBudget struct {
	// QueriesPerSecond is the sustained rate; 0 turns limiting off (the
	// per-client accounting behind `localdns top` stays on).
	QueriesPerSecond int
	// Burst is how many queries a client may send at once; 0 means
	// BurstFactor times QueriesPerSecond.
	Burst int
}

// Client budget defaults and bounds: far above what a busy pod sends
// upstream, far below what one cluster CoreDNS pod serves (README.md).
const (
	DefaultClientQueriesPerSecond = 2000
	ClientBudgetBurstFactor       = 5
	MaxClientQueriesPerSecond     = 1_000_000
	MaxClientBurst                = 10_000_000
)

// AKS's hosts plugin refresh interval: default and bounds, in seconds.
const (
	DefaultHostsPluginRefreshIntervalInSeconds = 900
	MinHostsPluginRefreshIntervalInSeconds     = 5
	MaxHostsPluginRefreshIntervalInSeconds     = 86400
)

// EffectiveBurst is the burst the budget allows (Burst, or BurstFactor
// times QueriesPerSecond when Burst is 0).
func (b ClientBudget) EffectiveBurst() int {
	if b.Burst > 0 {
		return b.Burst
	}
	return ClientBudgetBurstFactor * b.QueriesPerSecond
}

// Default AKS values.
const (
	DefaultNodeListener      = "169.254.10.10"
	DefaultClusterListener   = "169.254.10.11"
	DefaultClusterDNS        = "10.0.0.10"
	DefaultClusterDomain     = "cluster.local"
	DefaultPort              = 53
	DefaultReadyPort         = 8181
	DefaultMetrics           = "127.0.0.1:9253"
	DefaultHealth            = "127.0.0.1:9254"
	DefaultSnapshot          = "/var/lib/localdns/cache.snapshot"
	DefaultReconcileInterval = 30 * time.Second
	DefaultLinkName          = "localdns"
	DefaultStateDir          = "/run/localdns"
	DefaultFallbackFile      = "/var/lib/localdns/fallback.json"
)

// DefaultResolvConf is the order auto discovery reads resolv.conf files in:
// systemd-resolved's upstream list first (it holds the real servers), then the
// classic file.
var DefaultResolvConf = []string{"/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"}

// DefaultOverride returns AKS's LocalDNSOverride defaults.
func DefaultOverride() Override {
	return Override{
		QueryLogging:                QueryLoggingError,
		Protocol:                    ProtocolPreferUDP,
		ForwardDestination:          DestinationClusterCoreDNS,
		ForwardPolicy:               PolicySequential,
		MaxConcurrent:               1000,
		CacheDurationInSeconds:      3600,
		ServeStaleDurationInSeconds: 3600,
		ServeStale:                  ServeStaleImmediate,
	}
}

// Default returns the node profile AKS would apply: Preferred mode, the two
// link-local listeners, and "." plus cluster.local in both override maps.
func Default() *Profile {
	vnetRoot := DefaultOverride()
	vnetRoot.ForwardDestination = DestinationVnetDNS
	return &Profile{
		Mode:              ModePreferred,
		NodeListener:      netip.MustParseAddr(DefaultNodeListener),
		ClusterListener:   netip.MustParseAddr(DefaultClusterListener),
		Port:              DefaultPort,
		ReadyPort:         DefaultReadyPort,
		ClusterDNS:        []Upstream{netip.AddrPortFrom(netip.MustParseAddr(DefaultClusterDNS), 53)},
		ClusterDomain:     DefaultClusterDomain,
		VNetDNSAuto:       true,
		ResolvConf:        append([]string(nil), DefaultResolvConf...),
		FailoverToVNetDNS: true,
		Network: Network{Manage: true, ReconcileInterval: DefaultReconcileInterval, ReplyNotrack: true,
			LinkName: DefaultLinkName, StateDir: DefaultStateDir,
			Fallback: true, FallbackFile: DefaultFallbackFile},
		Metrics: DefaultMetrics,
		Health:  DefaultHealth,
		Cache:   Cache{Engine: CacheEngineLocalDNS, MaxMemory: DefaultMaxMemory, Snapshot: DefaultSnapshot},

		ClientBudget: ClientBudget{QueriesPerSecond: DefaultClientQueriesPerSecond},

		HostsPluginRefreshIntervalInSeconds: DefaultHostsPluginRefreshIntervalInSeconds,

		CPULimitInMilliCores: DefaultCPULimitInMilliCores,
		MemoryLimitInMB:      DefaultMemoryLimitInMB,
		VnetDNSOverrides: map[string]Override{
			".":              vnetRoot,
			"cluster.local.": DefaultOverride(),
		},
		KubeDNSOverrides: map[string]Override{
			".":              DefaultOverride(),
			"cluster.local.": DefaultOverride(),
		},
	}
}

// Laptop returns the embedded profile `localdns run` uses when no node
// profile exists: unprivileged, loopback only, changes nothing on the
// machine, forwards everything to the resolv.conf nameservers.
func Laptop() *Profile {
	p := Default()
	p.Mode = ModePreferred
	p.NodeListener = netip.MustParseAddr("127.0.0.1")
	p.ClusterListener = netip.MustParseAddr("127.0.0.2")
	p.Port = 1053
	p.ReadyPort = 18181
	p.ClusterDNS = nil
	p.ClusterDNSAuto = true
	p.Network.Manage = false
	p.Metrics = "127.0.0.1:19253"
	p.Health = "127.0.0.1:19254"
	p.Cache.Snapshot = ""
	return p
}
