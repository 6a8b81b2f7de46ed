// Package daemon runs localdns: it loads the profile, starts the CoreDNS
// instance, owns the listener sockets, probes itself, reloads on SIGHUP and
// shuts down in order on SIGTERM.
//
// The order is the product (see DESIGN.md): nothing is installed on the node
// before the servers answer, and a reload or stop never leaves a moment when
// a listener socket is closed while the kernel still queues queries on it.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/corefile"
	_ "github.com/localdns/localdns/internal/plugins" // our CoreDNS build
	"github.com/localdns/localdns/plugin/frontend"
)

// NodeProfilePath is where a node's profile lives; `run` without flags uses
// it when it exists and the embedded laptop profile otherwise.
const NodeProfilePath = "/etc/localdns/localdns.yaml"

// Options select what to run.
type Options struct {
	ConfigPath   string // --config: a profile
	CorefilePath string // --corefile: a hand-written Corefile
	Logger       *slog.Logger
}

// Source is what the daemon runs: a Corefile and, when it came from a
// profile, the profile (nil for a hand-written Corefile).
type Source struct {
	Corefile    string
	Profile     *config.Profile
	Description string
}

// Load reads the source the options name.
func (o Options) Load() (*Source, error) {
	if o.CorefilePath != "" {
		data, err := os.ReadFile(o.CorefilePath)
		if err != nil {
			return nil, fmt.Errorf("read corefile: %w", err)
		}
		return &Source{Corefile: string(data), Description: "corefile " + o.CorefilePath}, nil
	}
	var (
		p    *config.Profile
		desc string
		err  error
	)
	switch {
	case o.ConfigPath != "":
		p, err = config.Load(o.ConfigPath)
		desc = "profile " + o.ConfigPath
	case fileExists(NodeProfilePath):
		p, err = config.Load(NodeProfilePath)
		desc = "profile " + NodeProfilePath
	default:
		p, desc = config.Laptop(), "embedded laptop profile"
	}
	if err != nil {
		return nil, err
	}
	ups, err := p.ResolveUpstreams()
	if err != nil {
		return nil, err
	}
	text, err := corefile.Render(p, ups)
	if err != nil {
		return nil, err
	}
	return &Source{Corefile: text, Profile: p, Description: desc}, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Daemon is a running localdns.
type Daemon struct {
	opts   Options
	log    *slog.Logger
	source *Source
	inst   *caddy.Instance
	owner  *socketOwner
}

// Start loads the source, starts CoreDNS and serves every listener, and
// returns once each listener answers its probe.
func Start(ctx context.Context, opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	src, err := opts.Load()
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Logger, source: src}
	d.owner = newSocketOwner(d.log, BindSockets)
	if err := d.start(); err != nil {
		d.owner.Close()
		return nil, err
	}
	if err := d.probeAll(ctx, 5*time.Second); err != nil {
		d.Stop()
		return nil, err
	}
	d.logStarted()
	return d, nil
}

func (d *Daemon) start() error {
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(d.source.Corefile), Filepath: d.source.Description, ServerTypeName: "dns"})
	if err != nil {
		return fmt.Errorf("start CoreDNS from %s: %w", d.source.Description, err)
	}
	d.inst = inst
	if fs := frontend.From(inst); fs != nil {
		if err := fs.Attach(d.owner); err != nil {
			inst.ShutdownCallbacks()
			inst.Stop()
			return fmt.Errorf("serve listeners: %w", err)
		}
	}
	return nil
}

func (d *Daemon) logStarted() {
	attrs := []any{"source", d.source.Description, "listening", d.listening()}
	if p := d.source.Profile; p != nil {
		attrs = append(attrs,
			"mode", p.Mode,
			"node", netip.AddrPortFrom(p.NodeListener, p.Port).String(),
			"cluster", netip.AddrPortFrom(p.ClusterListener, p.Port).String(),
			"cache", p.Cache.Engine, "maxMemory", p.Cache.MaxMemory, "snapshot", p.Cache.Snapshot,
			"metrics", p.Metrics, "manageNetwork", p.Network.Manage)
	}
	d.log.Info("localdns serving", attrs...)
}

// listening returns the addresses DNS is served on.
func (d *Daemon) listening() []string {
	addrs := d.owner.Addresses()
	if len(addrs) == 0 && d.inst != nil {
		for _, s := range d.inst.Servers() {
			if a := s.LocalAddr(); a != nil {
				addrs = append(addrs, a.String())
			}
		}
	}
	sort.Strings(addrs)
	return addrs
}

// Listeners returns the addresses the profile's listeners serve on, or nil
// for a hand-written Corefile.
func (d *Daemon) Listeners() []netip.AddrPort {
	p := d.source.Profile
	if p == nil {
		return nil
	}
	return []netip.AddrPort{netip.AddrPortFrom(p.NodeListener, p.Port), netip.AddrPortFrom(p.ClusterListener, p.Port)}
}

// probeAll waits until every listener answers the probe zone over UDP and
// TCP, or the timeout passes.
func (d *Daemon) probeAll(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, l := range d.Listeners() {
		for _, network := range []string{"udp", "tcp"} {
			for {
				err := Probe(ctx, l, network)
				if err == nil {
					break
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return fmt.Errorf("self-probe of %s/%s failed: %w", l, network, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return nil
}

// Probe asks addr for the probe zone over network and checks the answer.
func Probe(ctx context.Context, addr netip.AddrPort, network string) error {
	c := &dns.Client{Net: network, Timeout: time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(corefile.ProbeZone), dns.TypeA)
	r, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return err
	}
	// whoami answers NOERROR with the client's address in the additional
	// section; anything else means the probe zone is not ours.
	if r.Rcode != dns.RcodeSuccess || len(r.Extra) == 0 {
		return fmt.Errorf("probe answered %s with %d additional records, want whoami's NOERROR", dns.RcodeToString[r.Rcode], len(r.Extra))
	}
	return nil
}

// Reload re-reads the source and swaps the running configuration. On any
// error the running configuration keeps serving and the error is returned.
func (d *Daemon) Reload() error {
	src, err := d.opts.Load()
	if err != nil {
		return fmt.Errorf("reload: keeping the running configuration: %w", err)
	}
	input := caddy.CaddyfileInput{Contents: []byte(src.Corefile), Filepath: src.Description, ServerTypeName: "dns"}
	fs := frontend.From(d.inst)
	if fs != nil {
		fs.PrepareRestart()
	}
	inst, err := d.inst.Restart(input)
	if err != nil {
		if fs != nil {
			fs.AbortRestart()
		}
		return fmt.Errorf("reload: keeping the running configuration: %w", err)
	}
	d.inst = inst
	if nfs := frontend.From(inst); nfs != nil {
		// Already handed over inside Restart; Attach is a no-op then, and
		// serves the listeners if the old config had no frontend.
		if err := nfs.Attach(d.owner); err != nil {
			return fmt.Errorf("reload: serve listeners: %w", err)
		}
	}
	d.source = src
	d.log.Info("reloaded", "source", src.Description)
	return nil
}

// Stop drains the listeners, runs CoreDNS's shutdown callbacks (the cache
// writes its snapshot there) and stops the instance.
func (d *Daemon) Stop() {
	d.owner.Close()
	if d.inst != nil {
		for _, err := range d.inst.ShutdownCallbacks() {
			d.log.Warn("shutdown callback", "err", err)
		}
		d.inst.Stop()
	}
}

// Run starts localdns and serves until ctx ends or SIGTERM/SIGINT arrives;
// SIGHUP reloads.
func Run(ctx context.Context, opts Options) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	d, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			d.log.Info("stopping", "reason", ctx.Err())
			d.Stop()
			return nil
		case s := <-sigs:
			if s == syscall.SIGHUP {
				if err := d.Reload(); err != nil {
					d.log.Error(strings.ReplaceAll(err.Error(), "\n", " | "))
				}
				continue
			}
			d.log.Info("stopping", "signal", s.String())
			d.Stop()
			return nil
		}
	}
}
