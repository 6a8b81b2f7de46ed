package nodecache

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
)

var log = clog.NewWithPlugin("nodecache")

func init() { plugin.Register("nodecache", setup) }

// shared is the process-wide store (see the package doc for why it is
// package-level): created by the first nodecache block, kept across reloads.
var shared struct {
	mu    sync.Mutex
	store *Store
}

// Shared returns the process-wide store, or nil before any nodecache block
// was set up. A socket front-end uses it to call ServeWire; once non-nil it
// is the same store for the life of the process (reloads keep it), so the
// front-end may keep the pointer.
func Shared() *Store {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	return shared.store
}

var emptyStore = NewStore(minMemory)

func sharedOrEmpty() *Store {
	if s := Shared(); s != nil {
		return s
	}
	return emptyStore
}

// sharedStore returns the process-wide store with the given budget,
// creating it on first use.
func sharedStore(budget int64) *Store {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.store == nil {
		shared.store = NewStore(budget)
	} else if shared.store.Budget() != budget {
		shared.store.Resize(budget)
	}
	return shared.store
}

// instanceKey stores, per caddy instance, the process-wide settings seen so
// far so that every block can be checked against them.
type instanceKey struct{}

type instanceSettings struct {
	memory        int64
	snapshotPath  string
	snapshotEvery time.Duration
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error("nodecache", err)
	}

	settings, first := c.Get(instanceKey{}).(*instanceSettings)
	first = !first
	if first {
		settings = &instanceSettings{memory: cfg.memory, snapshotPath: cfg.snapshotPath, snapshotEvery: cfg.snapshotEvery}
		c.Set(instanceKey{}, settings)
	} else if err := settings.merge(cfg); err != nil {
		return plugin.Error("nodecache", err)
	}

	store := sharedStore(cfg.memory)
	dc := dnsserver.GetConfig(c)
	h := &Nodecache{
		store: store,
		ns:    NamespaceFor(dc.Zone, dc.ListenHosts, dc.Port),
		pol:   cfg.policy,
		label: serverLabel(dc),
	}
	dc.AddPlugin(func(next plugin.Handler) plugin.Handler {
		h.Next = next
		return h
	})
	c.OnStartup(func() error {
		store.register(h)
		return nil
	})
	c.OnShutdown(func() error {
		store.unregister(h)
		return nil
	})
	if first {
		// Once per instance: restore (first start of the process only) and
		// run the periodic snapshot with the settings all blocks agreed on;
		// save at the final shutdown, not at a reload.
		c.OnStartup(func() error {
			store.resetPins() // this instance's blocks register theirs next
			store.startSnapshots(settings.snapshotPath, settings.snapshotEvery)
			return nil
		})
		c.OnFinalShutdown(store.finalSnapshot)
	}
	if len(cfg.pins) > 0 {
		p := &pinner{h: h, names: cfg.pins, interval: cfg.pinRefresh}
		c.OnStartup(func() error { p.start(); return nil })
		c.OnShutdown(func() error { p.stop(); return nil })
	}
	return nil
}

// merge checks a block's process-wide settings against the earlier blocks.
func (s *instanceSettings) merge(cfg config) error {
	if cfg.memory != s.memory {
		return fmt.Errorf("memory is process-wide: this block says %d, another %d", cfg.memory, s.memory)
	}
	switch {
	case cfg.snapshotPath == "":
	case s.snapshotPath == "":
		s.snapshotPath, s.snapshotEvery = cfg.snapshotPath, cfg.snapshotEvery
	case cfg.snapshotPath != s.snapshotPath || cfg.snapshotEvery != s.snapshotEvery:
		return fmt.Errorf("snapshot is process-wide: this block says %s %s, another %s %s",
			cfg.snapshotPath, cfg.snapshotEvery, s.snapshotPath, s.snapshotEvery)
	}
	return nil
}

// serverLabel mirrors the server label CoreDNS's metrics use for a block,
// for answers served by ServeWire outside the CoreDNS server.
func serverLabel(dc *dnsserver.Config) string {
	host := ""
	if len(dc.ListenHosts) > 0 {
		host = dc.ListenHosts[0]
	}
	transport := dc.Transport
	if transport == "" {
		transport = "dns"
	}
	return transport + "://" + net.JoinHostPort(host, dc.Port)
}
