package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/localdns/localdns/internal/atomicfile"
	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/netsetup"
	"github.com/localdns/localdns/internal/sdnotify"
)

// fallbackRoutes sends the node listener's queries to the VNet DNS servers
// and the cluster listener's to the cluster DNS service, as the profile's
// "." zones do. A listener without upstreams gets no route.
func fallbackRoutes(p *config.Profile, ups config.Upstreams) []netsetup.FallbackRoute {
	if !p.Network.Fallback {
		return nil
	}
	var rs []netsetup.FallbackRoute
	for _, r := range []struct {
		listener netip.Addr
		ups      []config.Upstream
	}{{p.NodeListener, ups.VNet}, {p.ClusterListener, ups.Cluster}} {
		var targets []netip.AddrPort
		for _, u := range r.ups {
			a := u.Addr().Unmap()
			if a.Is4() != r.listener.Is4() || a.IsLoopback() {
				continue // another family, or a server only the host reaches
			}
			targets = append(targets, netip.AddrPortFrom(a, u.Port()))
		}
		if len(targets) > 0 {
			rs = append(rs, netsetup.FallbackRoute{Listener: r.listener, Upstreams: targets})
		}
	}
	return rs
}

// savedFallback is the fallback file: what the last valid profile said to
// install, so that a start on a broken profile (or the socket unit's
// teardown after one) can still send the pods' queries somewhere.
type savedFallback struct {
	Saved        time.Time                `json:"saved"`
	LinkName     string                   `json:"linkName"`
	Addrs        []netip.Addr             `json:"addrs"`
	Port         uint16                   `json:"port"`
	Table        string                   `json:"table"`
	ReplyNotrack bool                     `json:"replyNotrack"`
	StateDir     string                   `json:"stateDir"`
	Routes       []netsetup.FallbackRoute `json:"routes"`
}

// saveFallback records cfg in path (atomically), for loadFallback.
func saveFallback(path string, cfg netsetup.Config) error {
	if path == "" || len(cfg.Fallback) == 0 {
		return nil
	}
	b, err := json.MarshalIndent(savedFallback{
		Saved: time.Now().UTC(), LinkName: cfg.LinkName, Addrs: cfg.Addrs, Port: cfg.Port, Table: cfg.Table,
		ReplyNotrack: cfg.ReplyNotrack, StateDir: cfg.StateDir, Routes: cfg.Fallback,
	}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode fallback: %w", err)
	}
	if err := atomicfile.Write(path, 0o600, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("save fallback to %s: %w", path, err)
	}
	return nil
}

// loadFallback reads what saveFallback wrote.
func loadFallback(path string) (netsetup.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netsetup.Config{}, fmt.Errorf("read saved fallback: %w", err)
	}
	var s savedFallback
	if err := json.Unmarshal(b, &s); err != nil {
		return netsetup.Config{}, fmt.Errorf("saved fallback %s: %w", path, err)
	}
	return netsetup.Config{LinkName: s.LinkName, Addrs: s.Addrs, Port: s.Port, Table: s.Table,
		ReplyNotrack: s.ReplyNotrack, StateDir: s.StateDir, Fallback: s.Routes}, nil
}

// FallbackConfig is the network configuration with fallback routes for p:
// from p's upstreams where they resolve, else from the fallback file the
// last valid profile left (p may be nil: the profile did not load). It
// says where the routes came from.
func FallbackConfig(p *config.Profile) (netsetup.Config, string, error) {
	file := config.DefaultFallbackFile
	if p != nil {
		if !p.Network.Manage || !p.Network.Fallback {
			return netsetup.Config{}, "", errors.New("the profile turns the fallback off (network.manage or network.fallback false)")
		}
		file = p.Network.FallbackFile
		ups, err := p.ResolveUpstreams()
		if err == nil {
			cfg := NetworkConfig(p, nil)
			if cfg.Fallback = fallbackRoutes(p, ups); len(cfg.Fallback) > 0 {
				return cfg, "the profile", nil
			}
			err = errors.New("no upstream the fallback can send to")
		}
		if file == "" {
			return netsetup.Config{}, "", err
		}
	}
	cfg, err := loadFallback(file)
	if err != nil {
		return netsetup.Config{}, "", err
	}
	return cfg, file, nil
}

// FailOpen installs the fallback after localdns failed to start or decided
// not to serve, unless something already answers on every listener (a
// second instance must not take the first one's listeners away). p may be
// nil when the profile did not load.
func FailOpen(log *slog.Logger, p *config.Profile) {
	cfg, from, err := FallbackConfig(p)
	if err != nil {
		log.Error("no fallback: pods resolving through the listeners get no answer until localdns serves", "err", err)
		return
	}
	if servedElsewhere(cfg) {
		log.Info("every listener answers (another localdns serves them): no fallback")
		return
	}
	if err := netsetup.InstallFallback(cfg); err != nil {
		log.Error("installing the fallback failed: pods resolving through the listeners get no answer", "err", err)
		return
	}
	log.Warn("fallback in place: queries to the listeners go straight to the upstreams until localdns serves again", "routes", fmt.Sprint(cfg.Fallback), "from", from)
	sdnotify.Status("not serving: fallback to the upstreams in place")
}

// servedElsewhere reports whether every listener answers a probe now
// (UDP and TCP, briefly, with the probe mark that passes the fallback).
func servedElsewhere(cfg netsetup.Config) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	port := cfg.Port
	if port == 0 {
		port = netsetup.DefaultPort
	}
	var listeners []netip.AddrPort
	for _, a := range cfg.Addrs {
		listeners = append(listeners, netip.AddrPortFrom(a, port))
	}
	return sdnotify.ListenerProbe(listeners...)(ctx) == nil
}

// saveFallback records where the fallback sends queries for src's profile
// (see fallbackRoutes) in the profile's fallback file, for a later start
// on a broken profile. Start and every successful reload call it.
func (d *Daemon) saveFallback(src *Source, cfg netsetup.Config) netsetup.Config {
	p := src.Profile
	cfg.Fallback = fallbackRoutes(p, src.Upstreams)
	if err := saveFallback(p.Network.FallbackFile, cfg); err != nil {
		d.log.Warn("fallback not saved for a start on a broken profile", "err", err)
	}
	return cfg
}

// failOpenAfter is FailOpen for a run that failed to start: for a node
// profile that manages the network, or one that did not load at all (the
// fallback file then says where to send queries). A hand-written Corefile
// and the laptop profile install nothing.
func failOpenAfter(opts Options, log *slog.Logger) {
	if opts.CorefilePath != "" {
		return
	}
	src, err := opts.read()
	switch {
	case err != nil:
		FailOpen(log, nil)
	case src.Profile != nil && src.Profile.Network.Manage && src.Profile.Mode != config.ModeDisabled:
		FailOpen(log, src.Profile)
	}
}
