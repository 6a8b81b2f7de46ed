package upstream

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/parse"
	"github.com/coredns/coredns/plugin/pkg/proxy"
	"github.com/coredns/coredns/plugin/pkg/transport"
)

func init() { plugin.Register(pluginName, setup) }

const (
	defaultMaxConcurrent = 1000
	defaultHCInterval    = 500 * time.Millisecond
	defaultMaxFails      = 2
	// defaultSpread is the default lifetime of an upstream socket (UDP
	// socket of the pool, or TCP connection). See the README: with
	// defaultPool sockets it bounds the conntrack entries of one upstream
	// to defaultPool × (30 s / 1 s + 1) = 496, and gives a flow per socket
	// and second to spread over the service's pods.
	defaultSpread = 1 * time.Second
	// defaultPool is the default number of UDP sockets per upstream.
	defaultPool = 16
	// defaultTimeout is the default overall deadline of a query, below the
	// 5 s after which glibc and musl clients retry.
	defaultTimeout = 2 * time.Second
)

// Spread settings besides a socket lifetime.
const (
	// spreadOff reuses sockets as forward does: one flow, one backend.
	spreadOff time.Duration = -1
	// spreadQuery sends every query on a fresh socket (connection).
	spreadQuery time.Duration = 0
	// spreadUnset: defaultSpread.
	spreadUnset time.Duration = -2
)

// defaultNeverFailover returns the zones only cluster CoreDNS answers for.
func defaultNeverFailover() []string {
	return []string{"cluster.local.", "in-addr.arpa.", "ip6.arpa."}
}

// config is the parsed upstream block.
type config struct {
	to, failover     []string
	neverFailover    []string
	routeName        string
	failoverName     string
	forceTCP         bool
	policy           policy
	maxConcurrent    int64
	hcInterval       time.Duration
	hcNoRec          bool
	hcDomain         string
	maxFails         uint32
	spread           time.Duration // socket lifetime; spreadQuery, spreadOff or a duration
	pool             int           // UDP sockets per upstream
	timeout          time.Duration // overall deadline of a query
	neverFailoverSet bool
	tryUnhealthy     bool // try the upstreams even when all are down
}

func setup(c *caddy.Controller) error {
	cfg, err := parseConfig(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	sc := dnsserver.GetConfig(c)
	for _, addr := range append(append([]string(nil), cfg.to...), cfg.failover...) {
		if err := checkLoop(addr, sc.ListenHosts, sc.Port); err != nil {
			return plugin.Error(pluginName, err)
		}
	}

	u, err := newUpstream(cfg, healthSetOf(c))
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	c.OnStartup(func() error {
		u.start()
		return nil
	})
	c.OnShutdown(func() error {
		u.stop()
		return nil
	})
	sc.AddPlugin(func(next plugin.Handler) plugin.Handler {
		u.Next = next
		return u
	})
	return nil
}

// newUpstream builds the handler and its proxies from cfg; nothing runs yet.
func newUpstream(cfg *config, hs *healthSet) (*Upstream, error) {
	u := &Upstream{
		maxConcurrent: cfg.maxConcurrent,
		neverFailover: cfg.neverFailover,
		timeout:       cfg.timeout,
		tryUnhealthy:  cfg.tryUnhealthy,
		// Half the deadline per try: a second try (another flow, so most
		// likely another pod) or the failover group still fits in it.
		try: cfg.timeout / 2,
	}
	u.opts.PreferUDP = !cfg.forceTCP
	u.opts.ForceTCP = cfg.forceTCP

	var err error
	if u.route, err = newGroup(cfg, hs, cfg.routeName, cfg.to, cfg.policy, cfg.probeDomain(true), u.try); err != nil {
		return nil, err
	}
	if len(cfg.failover) > 0 {
		// The failover group shares the policy's rule but not its state.
		p, _ := newPolicy(cfg.policy.String())
		if u.failover, err = newGroup(cfg, hs, cfg.failoverName, cfg.failover, p, cfg.probeDomain(false), u.try); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// probeDomain is the name a group's health probes ask NS for. The failover
// group (recursive VNet resolvers) is probed with ".", like forward does.
// The route group of a block with a failover group is cluster DNS; unless
// "domain" says otherwise it is probed with the first never_failover zone
// (the cluster domain), which it answers itself. Probing it with "." would
// make its health depend on the VNet DNS it forwards "." to: in a VNet DNS
// outage its ". NS" answer comes after the probe's timeout, and a working
// cluster DNS would be marked down with every cluster name failing. A route
// group without a failover group is probed with ".".
func (cfg *config) probeDomain(route bool) string {
	switch {
	case !route:
		return "."
	case cfg.hcDomain != "":
		return cfg.hcDomain
	case len(cfg.failover) > 0 && len(cfg.neverFailover) > 0:
		return cfg.neverFailover[0]
	}
	return "."
}

func newGroup(cfg *config, hs *healthSet, name string, addrs []string, pol policy, probe string, try time.Duration) (*group, error) {
	g := &group{name: name, policy: pol}
	for _, addr := range addrs {
		lifetime := cfg.spread // spreadQuery (0) and spreadOff (< 0) mean the same to the pool
		pool, err := newUDPPool(addr, cfg.pool, lifetime, unmatchedReplies.WithLabelValues(name, addr))
		if err != nil {
			return nil, err
		}
		m := &member{
			pool:  pool,
			p:     proxy.NewProxy(pluginName, addr, "dns"),
			group: name,
			addr:  addr,
			h: hs.get(healthKey{group: name, addr: addr, domain: probe}, healthSettings{
				tcp:      cfg.forceTCP,
				interval: cfg.hcInterval,
				noRec:    cfg.hcNoRec,
				maxfails: cfg.maxFails,
			}),
		}
		m.p.SetReadTimeout(try)
		switch cfg.spread {
		case spreadOff:
			// forward's behaviour: reuse a socket until it idles 10s.
		case spreadQuery:
			// A fresh socket per query: an idle socket is expired at
			// once, and at most one waits to be closed.
			m.p.SetExpire(0)
			m.p.SetMaxIdleConns(1)
		default:
			// Sockets are reused, but none lives longer than spread.
			m.p.SetMaxAge(cfg.spread)
		}
		g.members = append(g.members, m)
	}
	return g, nil
}

func (u *Upstream) groups() []*group {
	if u.failover == nil {
		return []*group{u.route}
	}
	return []*group{u.route, u.failover}
}

// start starts the proxies' connection managers; health checks are
// started by the instance's health set.
func (u *Upstream) start() {
	for _, g := range u.groups() {
		for _, m := range g.members {
			m.p.Start(m.h.interval) // the probe interval is unused: health runs in m.h
		}
	}
}

func (u *Upstream) stop() {
	for _, g := range u.groups() {
		for _, m := range g.members {
			m.p.Stop()
			m.pool.close()
		}
	}
}

func parseConfig(c *caddy.Controller) (*config, error) {
	cfg := &config{
		routeName:     "route",
		failoverName:  "failover",
		maxConcurrent: defaultMaxConcurrent,
		hcInterval:    defaultHCInterval,
		hcDomain:      "", // see probeDomain
		maxFails:      defaultMaxFails,
		spread:        spreadUnset,
		pool:          defaultPool,
		timeout:       defaultTimeout,
		policy:        sequential{},
		neverFailover: defaultNeverFailover(),
	}
	seen := false
	for c.Next() {
		if seen {
			return nil, c.Err("only one upstream per server block")
		}
		seen = true
		if len(c.RemainingArgs()) != 0 {
			return nil, c.ArgErr()
		}
		for c.NextBlock() {
			if err := parseDirective(c, cfg); err != nil {
				return nil, err
			}
		}
	}
	if len(cfg.to) == 0 {
		return nil, c.Err("no upstream given: 'to' is required")
	}
	if cfg.spread == spreadUnset {
		cfg.spread = defaultSpread
	}
	if cfg.routeName == cfg.failoverName && len(cfg.failover) > 0 {
		return nil, c.Errf("group_names must differ: %q", cfg.routeName)
	}
	return cfg, nil
}

func parseDirective(c *caddy.Controller, cfg *config) error {
	dir := c.Val()
	args := c.RemainingArgs()
	switch dir {
	case "to", "failover":
		if len(args) == 0 {
			return c.ArgErr()
		}
		addrs, err := upstreamAddrs(args)
		if err != nil {
			return c.Errf("%s: %v", dir, err)
		}
		if dir == "to" {
			cfg.to = append(cfg.to, addrs...)
		} else {
			cfg.failover = append(cfg.failover, addrs...)
		}
	case "never_failover":
		if len(args) == 0 {
			return c.ArgErr()
		}
		if !cfg.neverFailoverSet {
			cfg.neverFailover = nil
			cfg.neverFailoverSet = true
		}
		for _, z := range args {
			zones := plugin.Host(z).NormalizeExact()
			if len(zones) == 0 {
				return c.Errf("never_failover: invalid zone %q", z)
			}
			cfg.neverFailover = append(cfg.neverFailover, zones...)
		}
	case "group_names":
		if len(args) < 1 || len(args) > 2 {
			return c.ArgErr()
		}
		cfg.routeName = args[0]
		if len(args) == 2 {
			cfg.failoverName = args[1]
		}
	case "protocol":
		if len(args) != 1 {
			return c.ArgErr()
		}
		switch args[0] {
		case "prefer_udp":
			cfg.forceTCP = false
		case "force_tcp":
			cfg.forceTCP = true
		default:
			return c.Errf("protocol: unknown %q (prefer_udp or force_tcp)", args[0])
		}
	case "policy":
		if len(args) != 1 {
			return c.ArgErr()
		}
		p, ok := newPolicy(args[0])
		if !ok {
			return c.Errf("policy: unknown %q (sequential, round_robin or random)", args[0])
		}
		cfg.policy = p
	case "max_concurrent":
		if len(args) != 1 {
			return c.ArgErr()
		}
		n, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil || n < 0 {
			return c.Errf("max_concurrent: want a number >= 0 (0: no limit), got %q", args[0])
		}
		cfg.maxConcurrent = n
	case "health_check":
		if len(args) < 1 {
			return c.ArgErr()
		}
		d, err := time.ParseDuration(args[0])
		if err != nil || d <= 0 {
			return c.Errf("health_check: want a positive duration, got %q", args[0])
		}
		cfg.hcInterval = d
		for i := 1; i < len(args); i++ {
			switch args[i] {
			case "no_rec":
				cfg.hcNoRec = true
			case "domain":
				if i+1 >= len(args) {
					return c.Err("health_check: domain needs a name")
				}
				i++
				cfg.hcDomain = plugin.Name(args[i]).Normalize()
			default:
				return c.Errf("health_check: unknown option %q", args[i])
			}
		}
	case "max_fails":
		if len(args) != 1 {
			return c.ArgErr()
		}
		n, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil {
			return c.Errf("max_fails: want a number >= 0, got %q", args[0])
		}
		cfg.maxFails = uint32(n)
	case "spread":
		if len(args) != 1 {
			return c.ArgErr()
		}
		switch args[0] {
		case "off":
			cfg.spread = spreadOff
		case "query":
			cfg.spread = spreadQuery
		default:
			d, err := time.ParseDuration(args[0])
			if err != nil || d <= 0 {
				return c.Errf("spread: want off, query or a positive duration, got %q", args[0])
			}
			cfg.spread = d
		}
	case "pool":
		if len(args) != 1 {
			return c.ArgErr()
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > 4096 {
			return c.Errf("pool: want a number of sockets from 1 to 4096, got %q", args[0])
		}
		cfg.pool = n
	case "timeout":
		if len(args) != 1 {
			return c.ArgErr()
		}
		d, err := time.ParseDuration(args[0])
		if err != nil || d < 10*time.Millisecond {
			return c.Errf("timeout: want a duration of at least 10ms, got %q", args[0])
		}
		cfg.timeout = d
	case "try_unhealthy":
		if len(args) != 0 {
			return c.ArgErr()
		}
		cfg.tryUnhealthy = true
	default:
		return c.Errf("unknown property %q", dir)
	}
	return nil
}

// upstreamAddrs turns ip[:port] arguments (or resolv.conf-style files) into
// ip:port strings; only plain DNS is accepted.
func upstreamAddrs(args []string) ([]string, error) {
	hosts, err := parse.HostPortOrFile(args...)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if trans, _ := parse.Transport(h); trans != transport.DNS {
			return nil, fmt.Errorf("%q: only plain DNS upstreams are supported", h)
		}
	}
	return hosts, nil
}

// checkLoop refuses an upstream that is one of this server block's own
// listen addresses: a query would come straight back to us.
func checkLoop(upstream string, listenHosts []string, listenPort string) error {
	host, port, err := net.SplitHostPort(upstream)
	if err != nil {
		return fmt.Errorf("upstream %q: %w", upstream, err)
	}
	if port != listenPort {
		return nil
	}
	ip := net.ParseIP(stripZone(host))
	if ip == nil {
		return nil
	}
	for _, lh := range listenHosts {
		lip := net.ParseIP(stripZone(lh))
		switch {
		case lh == "" || (lip != nil && lip.IsUnspecified()):
			if isLocal(ip) {
				return fmt.Errorf("upstream %s is a local address and this block listens on all addresses at port %s: forwarding loop", upstream, listenPort)
			}
		case lip != nil && lip.Equal(ip):
			return fmt.Errorf("upstream %s is this block's own listen address: forwarding loop", upstream)
		}
	}
	return nil
}

func stripZone(h string) string {
	if i := strings.LastIndex(h, "%"); i >= 0 {
		return h[:i]
	}
	return h
}

// isLocal reports whether ip is an address of this host (network namespace).
func isLocal(ip net.IP) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
