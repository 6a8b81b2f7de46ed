// Package daemon runs localdns: it loads the profile, starts the CoreDNS
// instance, owns the listener sockets, probes itself, reloads on SIGHUP and
// shuts down in order on SIGTERM.
//
// The order is the product (README.md, "How a query is served"): nothing is installed on the node
// before the servers answer, and a reload or stop never leaves a moment when
// a listener socket is closed while the kernel still queues queries on it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coredns/caddy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/activation"
	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/corefile"
	"github.com/localdns/localdns/internal/hostdns"
	"github.com/localdns/localdns/internal/netsetup"
	_ "github.com/localdns/localdns/internal/plugins" // our CoreDNS build
	"github.com/localdns/localdns/internal/sdnotify"
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
	// Version is localdns's version, exported as localdns_build_info.
	Version string
}

// Source is what the daemon runs: a Corefile and, when it came from a
// profile, the profile (nil for a hand-written Corefile).
type Source struct {
	Corefile    string
	Profile     *config.Profile
	Upstreams   config.Upstreams
	Description string
}

// Load reads the source the options name and renders it, discovering the
// upstreams. Its errors are StartErrors that say whether the configuration
// or the upstream discovery failed.
func (o Options) Load() (*Source, error) {
	src, err := o.read()
	if err != nil {
		return nil, err
	}
	return src, src.render(nil)
}

// read reads the Corefile or the profile, without rendering.
func (o Options) read() (*Source, error) {
	if o.CorefilePath != "" {
		data, err := os.ReadFile(o.CorefilePath)
		if err != nil {
			return nil, stepErr("read corefile", ExitConfig, err)
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
		return nil, stepErr("load profile", ExitConfig, err)
	}
	return &Source{Profile: p, Description: desc}, nil
}

// render discovers the upstreams (or uses fixed ones) and renders the
// profile's Corefile. A Corefile source and a Disabled profile need nothing.
func (s *Source) render(fixed *config.Upstreams) error {
	p := s.Profile
	if p == nil || p.Mode == config.ModeDisabled {
		return nil
	}
	ups := config.Upstreams{}
	if fixed != nil {
		ups = *fixed
	} else {
		var err error
		if ups, err = p.ResolveUpstreams(); err != nil {
			return stepErr("upstreams", ExitUpstreams, err)
		}
	}
	text, err := corefile.Render(p, ups)
	if err != nil {
		return stepErr("render", ExitConfig, err)
	}
	s.Corefile, s.Upstreams = text, ups
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Daemon is a running localdns.
type Daemon struct {
	opts       Options
	log        *slog.Logger
	source     *Source
	inst       *caddy.Instance
	owner      *socketOwner
	inherited  bool // some listener sockets came from systemd
	manage     bool // we installed addresses and rules
	redirected bool // the host resolver points at us
	net        netsetup.Config
	started    time.Time
	stopping   atomic.Bool
}

// startProbeTimeout bounds the start-up self-probe. Under socket activation
// the probe queues behind every query the kernel held while the process was
// replaced (up to ~20k per listener: about 2 s of work), so it gets far
// longer than one probe.
const startProbeTimeout = 15 * time.Second

// ErrDisabled is returned by Start when the profile's mode is Disabled.
var ErrDisabled = errors.New("mode is Disabled")

// ErrStopped is returned by Start when its context ended (a SIGTERM during
// start-up) before it finished; what it had started is stopped again.
var ErrStopped = errors.New("stopped during start-up")

// stopTimeout bounds the stop sequence (drain, the servers' grace time, the
// snapshot). It is below localdns.service's TimeoutStopSec (30 s), so
// localdns exits on its own, saying why, before systemd's SIGKILL.
const stopTimeout = 20 * time.Second

// stopped returns ErrStopped, with the reason, once ctx has ended.
func stopped(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrStopped, context.Cause(ctx))
}

// Start runs the start sequence (README.md, "How a query is served"): load the profile and discover
// upstreams, put the listener addresses in place, serve every listener,
// self-probe each one, and only then install the conntrack bypass. It
// returns once all of that is done; on failure it undoes what it did.
func Start(ctx context.Context, opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	src, err := opts.read()
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: opts.Logger, source: src, started: time.Now()}
	p := src.Profile
	if p != nil {
		d.net = NetworkConfig(p, netsetup.NewMetrics(prometheus.DefaultRegisterer))
		if p.Mode == config.ModeDisabled {
			return nil, ErrDisabled
		}
		if p.Network.Manage {
			// A redirect left behind by a crash would make discovery find
			// ourselves: undo it and wait for resolv.conf to drop us first.
			d.revertHostDNS()
			for _, path := range p.ResolvConf {
				if err := hostdns.WaitListenerGone(ctx, path, p.NodeListener, 5*time.Second); err != nil {
					d.log.Warn("resolv.conf still lists the node listener; discovery skips it", "file", path, "err", err)
				}
			}
		}
	}
	if err := src.render(nil); err != nil {
		return nil, err
	}
	if p != nil && p.Network.Manage {
		// Where queries go while this localdns does not serve (a failed
		// start, a stop), and what a start on a broken profile falls back to.
		d.net = d.saveFallback(src, d.net)
	}
	if err := stopped(ctx); err != nil {
		return nil, err
	}

	set, err := activation.Inherited()
	if err != nil {
		d.log.Warn("sockets passed by systemd unusable; binding our own", "err", err)
	}
	d.inherited = set.Len() > 0
	d.owner = newSocketOwner(d.log, inheritedSource(set, d.log))

	if p != nil && p.Network.Manage {
		res, err := netsetup.EnsureAddresses(d.net)
		if err != nil {
			return nil, d.abort(stepErr("listener addresses", ExitNetwork, err))
		}
		d.manage = true
		if res.Fallback {
			d.log.Warn("no dummy link type in this kernel: listener addresses are on lo", "reason", res.Reason)
		}
		if res.Changed() {
			d.log.Info("listener addresses in place", "link", res.Link, "added", res.Added)
		}
	}
	if err := stopped(ctx); err != nil {
		set.Release()
		return nil, d.abort(err)
	}
	if err := d.start(); err != nil {
		return nil, d.abort(err)
	}
	setMemoryLimit(d.log, p)
	for _, s := range set.Release() {
		d.log.Warn("socket passed by systemd matches no listener", "socket", s.String())
	}
	if err := d.probeAll(ctx, startProbeTimeout); err != nil {
		if serr := stopped(ctx); serr != nil {
			err = serr
		} else {
			err = stepErr("self-probe", ExitProbe, err)
		}
		return nil, d.abort(err)
	}
	if err := stopped(ctx); err != nil {
		return nil, d.abort(err)
	}
	if d.manage {
		if err := netsetup.EnsureRules(d.net); err != nil {
			return nil, d.abort(stepErr("conntrack bypass", ExitRules, err))
		}
		if p.HostResolver.Redirect {
			a, err := hostdns.Redirect(d.hostDNS())
			if err != nil {
				return nil, d.abort(stepErr("host resolver redirect", ExitHostDNS, err))
			}
			d.redirected = true
			d.log.Info("host resolver points at the node listener", "detail", a.String())
		}
	}
	d.logStarted()
	return d, nil
}

// abort undoes a partial start and returns err.
func (d *Daemon) abort(err error) error {
	d.Stop()
	if d.manage {
		d.revertHostDNS()
		d.teardownNetwork()
	}
	return err
}

func (d *Daemon) hostDNS() hostdns.Config {
	p := d.source.Profile
	return hostdns.Config{Listener: p.NodeListener, Port: p.Port, Interface: p.HostResolver.Interface}
}

// revertHostDNS removes our resolver drop-in if there is one (a no-op
// otherwise), so the host goes back to the DHCP-provided servers.
func (d *Daemon) revertHostDNS() {
	r, err := hostdns.Revert(d.hostDNS())
	if err != nil {
		d.log.Warn("host resolver revert", "err", err)
		return
	}
	if len(r.Removed) > 0 {
		d.log.Info("host resolver redirect removed", "removed", r.Removed)
	}
	d.redirected = false
}

func (d *Daemon) teardownNetwork() {
	if err := netsetup.Teardown(d.net); err != nil {
		d.log.Error("network teardown", "err", err)
	}
}

func (d *Daemon) start() error {
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(d.source.Corefile), Filepath: d.source.Description, ServerTypeName: "dns"})
	if err != nil {
		// Plugin setup refused the configuration (or, for a Corefile
		// without frontend, CoreDNS could not bind).
		return stepErr("start CoreDNS", ExitConfig, fmt.Errorf("%s: %w", d.source.Description, err))
	}
	d.inst = inst
	if fs := frontend.From(inst); fs != nil {
		if err := fs.Attach(d.owner); err != nil {
			return stepErr("serve listeners", ExitListen, err)
		}
	}
	return nil
}

func (d *Daemon) logStarted() {
	attrs := []any{"source", d.source.Description, "listening", d.listening(), "socketActivated", d.inherited}
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

// Summary is a one-line status for systemd's STATUS=.
func (d *Daemon) Summary() string {
	if p := d.source.Profile; p != nil {
		return fmt.Sprintf("serving node %s, cluster %s (%s)", netip.AddrPortFrom(p.NodeListener, p.Port), netip.AddrPortFrom(p.ClusterListener, p.Port), d.source.Description)
	}
	return fmt.Sprintf("serving %s", d.source.Description)
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
				err := sdnotify.Probe(ctx, l, network)
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

// Reload re-reads the source and swaps the running configuration. On any
// error the running configuration keeps serving and the error is returned.
func (d *Daemon) Reload() error {
	src, err := d.opts.read()
	if err == nil {
		// While the host resolver points at us, resolv.conf lists only our
		// node listener: keep the VNet servers discovered at start.
		var fixed *config.Upstreams
		if d.redirected && src.Profile != nil && src.Profile.VNetDNSAuto {
			fixed = &d.source.Upstreams
		}
		err = src.render(fixed)
	}
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
	if d.manage && src.Profile != nil && src.Profile.Network.Manage {
		d.saveFallback(src, NetworkConfig(src.Profile, nil))
	}
	d.log.Info("reloaded", "source", src.Description)
	return nil
}

// Stop drains the listeners, runs CoreDNS's shutdown callbacks (the cache
// writes its snapshot there) and stops the instance. It leaves addresses and
// rules in place; see Shutdown.
func (d *Daemon) Stop() {
	if d.owner != nil {
		d.owner.Close()
	}
	if d.inst != nil {
		for _, err := range d.inst.ShutdownCallbacks() {
			d.log.Warn("shutdown callback", "err", err)
		}
		d.inst.Stop()
		d.inst = nil
	}
}

// Shutdown is the stop sequence: drain, snapshot, stop, then the network
// teardown policy. When systemd passed the sockets, it keeps them queueing
// queries for the next process and leaves addresses and rules in place (the
// socket unit's ExecStopPost removes them when the socket unit stops);
// otherwise nothing will answer on the listener addresses any more, so they
// and the rules go.
func (d *Daemon) Shutdown() {
	d.Stop()
	if d.manage && !d.inherited {
		d.teardownNetwork()
	}
}

// Run starts localdns and serves until ctx ends or SIGTERM/SIGINT arrives;
// SIGHUP reloads. In Preferred mode a failed start tears down and returns
// nil, so the node keeps its central DNS; in Required mode it returns the
// error (see ExitCode). Disabled tears down and returns nil.
//
// A stop is honoured at any moment, start-up included, and is bounded: a
// second SIGTERM/SIGINT during the stop, or stopTimeout passing, makes Run
// return at once with an error, saying what was not finished.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger
	ctx, sig := watchSignals(ctx)
	defer sig.close()

	type started struct {
		d   *Daemon
		err error
	}
	startDone := make(chan started, 1)
	go func() {
		d, err := Start(ctx, opts)
		startDone <- started{d, err}
	}()
	var d *Daemon
	var err error
	select {
	case r := <-startDone:
		d, err = r.d, r.err
	case s := <-sig.force:
		log.Error("second signal during start-up: exiting without finishing the stop", "signal", s.String())
		return fmt.Errorf("start-up interrupted by a second %s", s)
	}
	if errors.Is(err, ErrDisabled) {
		log.Info("mode is Disabled: removing anything localdns installed and exiting")
		if src, lerr := opts.read(); lerr == nil && src.Profile != nil && src.Profile.Network.Manage {
			if _, terr := Teardown(src.Profile, TeardownOptions{}); terr != nil {
				log.Error("teardown", "err", terr)
			}
		}
		return nil
	}
	if err != nil && (errors.Is(err, ErrStopped) || ctx.Err() != nil) {
		log.Info("stopped during start-up", "reason", context.Cause(ctx), "err", err)
		return nil
	}
	if err != nil {
		failOpenAfter(opts, log)
		if preferred(opts) {
			log.Error("localdns could not start; mode Preferred: leaving the node on its central DNS", "err", err, "exitCodeInRequiredMode", ExitCode(err))
			sdnotify.Status("not started (Preferred mode fallback): " + err.Error())
			return nil
		}
		return err
	}
	if err := sdnotify.Ready(d.Summary()); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}

	bg, cancelBG := context.WithCancel(ctx)
	defer cancelBG()
	if p := d.source.Profile; p != nil && p.Health != "" {
		if err := d.serveHealth(bg, p.Health); err != nil {
			log.Error("health endpoint not served", "err", err)
		}
	}
	registerBuildInfo(opts.Version)
	wdMetrics, err := sdnotify.NewMetrics(prometheus.DefaultRegisterer)
	if err != nil {
		log.Warn("watchdog metrics", "err", err)
	}
	// Waited for by shutdown (not deferred: a stop cut short by a second
	// signal must not wait for them).
	var bgWG sync.WaitGroup
	bgWG.Add(1)
	go func() {
		defer bgWG.Done()
		if err := sdnotify.RunWatchdog(bg, sdnotify.ListenerProbe(d.Listeners()...), sdnotify.WithMetrics(wdMetrics), sdnotify.WithObserver(func(r sdnotify.Result) {
			if r.ProbeErr != nil {
				log.Warn("watchdog probe failed: withholding WATCHDOG=1", "err", r.ProbeErr)
			}
		})); err != nil {
			log.Error("watchdog", "err", err)
		}
	}()
	if d.manage {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			d.reconcileLoop(bg, d.source.Profile.Network.ReconcileInterval)
		}()
	}

	for {
		select {
		case <-ctx.Done():
			log.Info("stopping", "reason", context.Cause(ctx))
			return d.shutdown(cancelBG, &bgWG, sig.force)
		case <-sig.reload:
			sdnotify.Reloading()
			if err := d.Reload(); err != nil {
				log.Error(strings.ReplaceAll(err.Error(), "\n", " | "))
			}
			sdnotify.Ready(d.Summary())
		}
	}
}

// signals turns the process's signals into a stop (the first SIGTERM or
// SIGINT cancels the context Run works under), a forced exit (the second)
// and reload requests (SIGHUP).
type signals struct {
	c      chan os.Signal
	force  chan os.Signal
	reload chan struct{}
	done   chan struct{}
}

func watchSignals(parent context.Context) (context.Context, *signals) {
	ctx, cancel := context.WithCancelCause(parent)
	s := &signals{
		c:      make(chan os.Signal, 4),
		force:  make(chan os.Signal, 1),
		reload: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	signal.Notify(s.c, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		defer cancel(nil)
		stops := 0
		for {
			select {
			case <-s.done:
				return
			case sig := <-s.c:
				if sig == syscall.SIGHUP {
					select {
					case s.reload <- struct{}{}:
					default: // one is pending already: it reads the newest profile
					}
					continue
				}
				// The parent (cmd/localdns) may have ended ctx for this same
				// signal; count only what arrives here.
				if stops++; stops == 1 {
					cancel(fmt.Errorf("signal %s", sig))
					continue
				}
				select {
				case s.force <- sig:
				default:
				}
			}
		}
	}()
	return ctx, s
}

func (s *signals) close() {
	signal.Stop(s.c)
	close(s.done)
}

// shutdown runs the stop sequence, bounded by stopTimeout and cut short by
// a second signal on force.
func (d *Daemon) shutdown(cancelBG context.CancelFunc, bg *sync.WaitGroup, force <-chan os.Signal) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.stopping.Store(true)
		cancelBG()
		bg.Wait() // no watchdog ping or repair after STOPPING=1
		sdnotify.Stopping("draining and writing the cache snapshot")
		if d.redirected {
			d.revertHostDNS() // the host falls back to VNet DNS while we stop
		}
		d.Shutdown()
	}()
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case s := <-force:
		d.log.Error("second signal during the stop: exiting now; the stop did not finish (the cache snapshot may not be written)", "signal", s.String())
		return fmt.Errorf("stop interrupted by a second %s", s)
	case <-t.C:
		d.log.Error("the stop did not finish in time: exiting now (the cache snapshot may not be written)", "timeout", stopTimeout)
		return fmt.Errorf("stop did not finish within %s", stopTimeout)
	}
}

// preferred reports whether the profile asks for Preferred mode (a profile
// that failed to load counts as Required: there is nothing to prefer).
func preferred(opts Options) bool {
	if opts.CorefilePath != "" {
		return false
	}
	path := opts.ConfigPath
	if path == "" {
		if !fileExists(NodeProfilePath) {
			return false // the laptop profile: report errors plainly
		}
		path = NodeProfilePath
	}
	p, err := config.Load(path)
	return err == nil && p.Mode == config.ModePreferred
}
