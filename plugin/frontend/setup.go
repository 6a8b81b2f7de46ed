// Package frontend hands a server block's listening sockets to localdns.
//
// CoreDNS (through caddy) binds its own sockets and offers no hook to serve
// a socket it did not open. localdns needs to own them: systemd passes the
// listener sockets on restart (socket activation, so the kernel queues
// queries while the process is replaced), and the cache hit path reads the
// sockets itself. The frontend directive makes that possible without forking
// CoreDNS:
//
//   - at setup it records the block's real port, and once every directive is
//     set up (a caddy parsing callback after the last one, so plugins that
//     read the port at setup see the real one) it parks the block on port 0
//     of the same address: caddy's own server binds an ephemeral port that
//     nobody queries;
//   - in its startup callback (which runs after caddy built its servers and
//     before it binds them) it restores the real port and builds, with
//     dnsserver's own MakeServers, one *dnsserver.Server per real address with
//     the full plugin chain;
//   - it stores those servers in the caddy instance's Storage under Key, where
//     the daemon picks them up after caddy.Start or Instance.Restart and serves
//     them on the sockets it owns (dnsserver.Server.ServePacket/Serve).
//
// Nothing is global: the servers live in the instance that built them.
package frontend

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

const name = "frontend"

func init() { plugin.Register(name, setup) }

// Key is the caddy.Instance Storage key under which *Servers is stored.
type Key struct{}

// Owner serves built servers on the sockets it owns. Serve starts the given
// generation and retires the one it served before.
type Owner interface {
	Serve(servers *Servers) error
}

// Servers are the servers of one caddy instance, keyed by their real
// "dns://ip:port" address, ready to be served on sockets localdns owns.
type Servers struct {
	mu         sync.Mutex
	parked     map[*dnsserver.Config]string // config -> real port
	built      bool
	servers    map[string][]*dnsserver.Server
	configs    map[string][]*dnsserver.Config // by real "ip:port"
	err        error
	owner      Owner
	restarting bool
}

// Configs returns the server block configs served on addr ("ip:port"), so a
// front end can answer from the blocks' caches without the plugin chain.
func (s *Servers) Configs(addr string) []*dnsserver.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.configs[addr]
}

// Attach hands the servers to owner and remembers it for the next reload.
func (s *Servers) Attach(owner Owner) error {
	s.mu.Lock()
	if !s.built || s.err != nil {
		s.mu.Unlock()
		return fmt.Errorf("frontend: cannot attach: servers not built: %v", s.err)
	}
	if s.owner == owner {
		s.mu.Unlock()
		return nil // already handed over during the reload that built us
	}
	s.owner = owner
	s.mu.Unlock()
	return owner.Serve(s) // Serve reads the servers through the locked accessors
}

// PrepareRestart marks this instance as the one being replaced by the next
// caddy Instance.Restart, so the new instance hands its servers to the same
// owner before caddy shuts this instance's plugins down. Call it right before
// Restart; call AbortRestart if Restart failed.
func (s *Servers) PrepareRestart() { s.mu.Lock(); s.restarting = true; s.mu.Unlock() }

// AbortRestart undoes PrepareRestart after a failed Restart.
func (s *Servers) AbortRestart() { s.mu.Lock(); s.restarting = false; s.mu.Unlock() }

// ByAddress returns the built servers keyed by "ip:port" (no transport
// prefix), or the error that building them produced.
func (s *Servers) ByAddress() (map[string][]*dnsserver.Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.built {
		return nil, fmt.Errorf("frontend: servers not built yet (instance not started)")
	}
	return s.servers, s.err
}

func setup(c *caddy.Controller) error {
	c.Next() // directive name
	if c.NextArg() {
		return plugin.Error(name, c.ArgErr())
	}
	cfg := dnsserver.GetConfig(c)
	if cfg.Transport != "" && cfg.Transport != "dns" {
		return plugin.Error(name, fmt.Errorf("only plain DNS (UDP/TCP) blocks can be handed over, not %s://", cfg.Transport))
	}
	for _, h := range cfg.ListenHosts {
		if h == "" {
			return plugin.Error(name, fmt.Errorf("block %s needs a bind address: localdns never serves a wildcard address", cfg.Zone))
		}
	}

	servers, _ := c.Get(Key{}).(*Servers)
	if servers == nil {
		servers = &Servers{parked: map[*dnsserver.Config]string{}}
		c.Set(Key{}, servers)
		// One callback per instance: it runs before caddy binds (parked)
		// sockets, and before the loop plugin reads the block's port.
		c.OnStartup(func() error { return servers.build(c) })
		// Park only after every directive's setup ran: upstream's loop
		// check and nodecache's namespace read the real port.
		pending.Store(c.Context(), servers)
		registerPark(dnsserver.Directives[len(dnsserver.Directives)-1])
	}
	if _, seen := servers.parked[cfg]; !seen {
		servers.parked[cfg] = cfg.Port
	}
	return nil
}

// pending holds, per caddy parsing context, the servers whose blocks are to
// be parked once all directives are set up. It is parse-time registration
// state: park takes each entry out again. (A validation-only parse, which
// runs no parsing callbacks, leaves its entry behind; localdns validates
// profiles without caddy.)
var (
	pending    sync.Map // caddy.Context -> *Servers
	registered sync.Map // directive name -> struct{}
)

// registerPark registers park to run after the last directive of the chain.
func registerPark(last string) {
	if _, loaded := registered.LoadOrStore(last, struct{}{}); !loaded {
		caddy.RegisterParsingCallback("dns", last, park)
	}
}

// park moves the recorded blocks to port 0 of their addresses, after every
// setup and before caddy makes and binds its servers.
func park(ctx caddy.Context) error {
	v, ok := pending.LoadAndDelete(ctx)
	if !ok {
		return nil
	}
	s := v.(*Servers)
	s.mu.Lock()
	defer s.mu.Unlock()
	for cfg := range s.parked {
		cfg.Port = "0"
	}
	return nil
}

// build restores the real ports and makes the real servers.
func (s *Servers) build(c *caddy.Controller) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built {
		return s.err
	}
	s.built = true
	s.configs = map[string][]*dnsserver.Config{}
	for cfg, port := range s.parked {
		cfg.Port = port
		for _, h := range cfg.ListenHosts {
			addr := net.JoinHostPort(h, port)
			if ap, err := netip.ParseAddrPort(addr); err == nil {
				addr = ap.String() // the form dnsserver uses for server addresses
			}
			s.configs[addr] = append(s.configs[addr], cfg)
		}
	}
	list, err := c.Context().MakeServers()
	if err != nil {
		s.err = fmt.Errorf("frontend: build servers: %w", err)
		return s.err
	}
	s.servers = map[string][]*dnsserver.Server{}
	for _, srv := range list {
		ds, ok := srv.(*dnsserver.Server)
		if !ok {
			s.err = fmt.Errorf("frontend: unexpected server type %T", srv)
			return s.err
		}
		addr := strings.TrimPrefix(ds.Address(), "dns://")
		s.servers[addr] = append(s.servers[addr], ds)
	}
	// During a reload, take over from the instance being replaced now:
	// caddy runs the old instance's shutdown callbacks (which stop e.g. its
	// forwarders) right after this, so the old servers must stop taking
	// queries first.
	if prev := restarting(s); prev != nil {
		prev.mu.Lock()
		owner := prev.owner
		prev.restarting = false
		prev.mu.Unlock()
		if owner != nil {
			// Serve calls ByAddress and Configs, which take the lock.
			s.mu.Unlock()
			err := owner.Serve(s)
			s.mu.Lock()
			if err != nil {
				s.err = fmt.Errorf("frontend: hand over on reload: %w", err)
				return s.err
			}
			s.owner = owner
		}
	}
	return nil
}

// restarting finds the running instance marked by PrepareRestart. It uses
// caddy's own instance list; there is no registry of ours.
func restarting(self *Servers) *Servers {
	for _, inst := range caddy.Instances() {
		inst.StorageMu.RLock()
		s, _ := inst.Storage[Key{}].(*Servers)
		inst.StorageMu.RUnlock()
		if s == nil || s == self {
			continue
		}
		s.mu.Lock()
		r := s.restarting
		s.mu.Unlock()
		if r {
			return s
		}
	}
	return nil
}

// From returns the frontend servers of a started instance, or nil when the
// Corefile has no frontend directive (caddy then serves it itself).
func From(inst *caddy.Instance) *Servers {
	inst.StorageMu.RLock()
	defer inst.StorageMu.RUnlock()
	s, _ := inst.Storage[Key{}].(*Servers)
	return s
}
