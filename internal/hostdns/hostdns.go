// Package hostdns points the node's own resolver at localdns's node listener
// and puts it back.
//
// With systemd-networkd managing the link of the default route, it writes a
// runtime drop-in next to that link's .network file,
//
//	/run/systemd/network/<file>.network.d/70-localdns.conf
//
// which replaces the link's DNS servers with the listener and tells networkd
// to ignore the servers DHCP (v4 and v6) and router advertisements hand out,
// then reloads networkd. That is what AKS LocalDNS does; the host, kubelet and
// `dnsPolicy: Default` pods (through systemd-resolved's resolv.conf) then send
// DNS to the node listener. Where networkd does not manage the link but
// systemd-resolved runs, it writes a global resolved drop-in,
//
//	/run/systemd/resolved.conf.d/70-localdns.conf
//
// with the listener as the DNS server of the "~." routing domain, and reloads
// resolved. Both drop-ins live under /run, so a reboot forgets them: the
// host can never boot pointing at a localdns that is not running yet.
//
// Revert removes our drop-in wherever it is (found by its fixed name and the
// header we write, not by state we kept: it works after a SIGKILL and when the
// default route moved) and reloads what it changed, which gives the link its
// DHCP servers back. Redirect and Revert are idempotent: running either twice
// changes nothing the second time and does not reload again.
//
// What AKS does that we do not: it finds the interface with `ip route get`
// to a magic address and the .network file with `networkctl --json`. We read
// the routing table over netlink (no packet, no binary) and the .network file
// from networkd's per-link state file, the file sd_network_link_get_network_file(3)
// reads. The one process we run is the reload (networkctl reload, systemctl
// try-reload-or-restart systemd-resolved): Config.Reload replaces it in tests,
// where there is no systemd.
//
// Order: VNet DNS servers must be discovered before Redirect and after a
// Revert of a redirect a crash may have left behind (WaitListenerGone), or
// localdns would find itself, or nothing, in resolv.conf: while the drop-in
// applies, resolv.conf lists the listener alone.
package hostdns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/localdns/localdns/internal/atomicfile"
)

// Kinds of resolver configuration, passed to Config.Reload.
const (
	KindNetworkd = "networkd"
	KindResolved = "resolved"
)

// DropInName is the name of our drop-in, in either place.
const DropInName = "70-localdns.conf"

// Production paths (systemd's runtime directories).
const (
	DefaultNetworkRunDir     = "/run/systemd/network"
	DefaultNetifLinksDir     = "/run/systemd/netif/links"
	DefaultResolvedDropInDir = "/run/systemd/resolved.conf.d"
	DefaultResolvedRunDir    = "/run/systemd/resolve"
)

// header starts every drop-in we write; Revert removes only files that
// start with it.
const header = "# Written by localdns: points the host's DNS at localdns's node listener.\n" +
	"# Removed when localdns stops and by `localdns teardown`. Do not edit.\n"

// ErrNoResolver is returned by Redirect when neither systemd-networkd manages
// the link nor systemd-resolved runs: localdns does not edit /etc/resolv.conf.
var ErrNoResolver = errors.New("hostdns: neither systemd-networkd manages the link nor systemd-resolved runs")

// Config says what to point the host at and where systemd keeps its files.
// Zero paths take the production defaults.
type Config struct {
	// Listener is the node listener, e.g. 169.254.10.10.
	Listener netip.Addr
	// Port is the listener's DNS port; 0 and 53 write the address alone.
	// (glibc reads resolv.conf and cannot use another port: only
	// systemd-resolved's stub then reaches the listener.)
	Port uint16
	// Interface, when set, is the link whose networkd configuration gets the
	// drop-in. Empty: the link of the default route with the lowest metric
	// (IPv4, else IPv6).
	Interface string

	// NetworkRunDir is networkd's runtime configuration directory
	// (/run/systemd/network); the drop-in goes in <NetworkRunDir>/<file>.d/.
	NetworkRunDir string
	// NetifLinksDir holds networkd's per-link state files, named by ifindex
	// (/run/systemd/netif/links).
	NetifLinksDir string
	// ResolvedDropInDir is resolved's runtime drop-in directory
	// (/run/systemd/resolved.conf.d).
	ResolvedDropInDir string
	// ResolvedRunDir is resolved's runtime directory (/run/systemd/resolve);
	// the fallback is used only when it exists.
	ResolvedRunDir string

	// Reload makes the named daemon (KindNetworkd, KindResolved) read its
	// configuration again. Nil: Reload (networkctl reload; systemctl
	// try-reload-or-restart systemd-resolved.service).
	Reload func(kind string) error
	// NetNS, when > 0, is the network namespace whose routes are read
	// (tests); 0 means the namespace of the calling process.
	NetNS netns.NsHandle
}

func (cfg Config) withDefaults() Config {
	if cfg.NetworkRunDir == "" {
		cfg.NetworkRunDir = DefaultNetworkRunDir
	}
	if cfg.NetifLinksDir == "" {
		cfg.NetifLinksDir = DefaultNetifLinksDir
	}
	if cfg.ResolvedDropInDir == "" {
		cfg.ResolvedDropInDir = DefaultResolvedDropInDir
	}
	if cfg.ResolvedRunDir == "" {
		cfg.ResolvedRunDir = DefaultResolvedRunDir
	}
	if cfg.Reload == nil {
		cfg.Reload = Reload
	}
	return cfg
}

// server is the listener as networkd and resolved write a DNS server.
func (cfg Config) server() string {
	if cfg.Port == 0 || cfg.Port == 53 {
		return cfg.Listener.String()
	}
	return netip.AddrPortFrom(cfg.Listener, cfg.Port).String()
}

// networkdDropIn is the content of the networkd drop-in. The empty DNS=
// clears servers the .network file lists itself; UseDNS=false drops the
// ones DHCPv4, DHCPv6 and router advertisements hand out. [DHCPv4] and
// [DHCPv6] are the sections systemd 247 and later document ([DHCP] is their
// deprecated alias); a section a networkd does not know is ignored with a
// warning, never an error.
func networkdDropIn(server string) []byte {
	return []byte(header +
		"[Network]\n" +
		"DNS=\n" +
		"DNS=" + server + "\n" +
		"\n" +
		"[DHCPv4]\n" +
		"UseDNS=false\n" +
		"\n" +
		"[DHCPv6]\n" +
		"UseDNS=false\n" +
		"\n" +
		"[IPv6AcceptRA]\n" +
		"UseDNS=false\n")
}

// resolvedDropIn is the content of the resolved drop-in: the listener as the
// only global server, and "~." to make the global scope the route for every
// name not matched by a longer routing domain of a link.
func resolvedDropIn(server string) []byte {
	return []byte(header +
		"[Resolve]\n" +
		"DNS=\n" +
		"DNS=" + server + "\n" +
		"Domains=~.\n")
}

// Applied says what Redirect did.
type Applied struct {
	Kind        string // KindNetworkd or KindResolved
	Interface   string // the link whose resolver now points at the listener
	IfIndex     int
	NetworkFile string // the link's .network file (networkd only)
	Path        string // our drop-in
	Written     bool   // the drop-in was written (it was missing or differed)
	Removed     []string
	Reloaded    []string // kinds reloaded, in order
}

func (a Applied) String() string {
	s := fmt.Sprintf("%s drop-in %s for %s (ifindex %d)", a.Kind, a.Path, a.Interface, a.IfIndex)
	if a.NetworkFile != "" {
		s += ", network file " + a.NetworkFile
	}
	if !a.Written && len(a.Reloaded) == 0 {
		s += ", already in place"
	}
	if len(a.Removed) > 0 {
		s += ", removed stale " + strings.Join(a.Removed, " ")
	}
	if len(a.Reloaded) > 0 {
		s += ", reloaded " + strings.Join(a.Reloaded, " and ")
	}
	return s
}

// Redirect points the host's resolver at cfg.Listener: a networkd drop-in for
// the link of the default route when networkd manages it, else a resolved
// drop-in. It removes drop-ins of ours elsewhere (the default route moved, or
// networkd took over the link), and reloads each daemon whose configuration
// changed. Run again with nothing changed, it writes and reloads nothing,
// except when networkd reports that it does not apply our drop-in yet (a
// crash between the write and the reload).
//
// On error the host may be left half redirected; Revert cleans up.
func Redirect(cfg Config) (Applied, error) {
	cfg = cfg.withDefaults()
	if !cfg.Listener.IsValid() {
		return Applied{}, errors.New("hostdns: no listener address")
	}
	link, err := cfg.link()
	if err != nil {
		return Applied{}, err
	}
	a := Applied{Interface: link.Name, IfIndex: link.Index}
	state, err := readLinkState(filepath.Join(cfg.NetifLinksDir, strconv.Itoa(link.Index)))
	if err != nil {
		return a, err
	}
	var content []byte
	if state.NetworkFile != "" {
		a.Kind, a.NetworkFile = KindNetworkd, state.NetworkFile
		a.Path = filepath.Join(cfg.NetworkRunDir, filepath.Base(state.NetworkFile)+".d", DropInName)
		content = networkdDropIn(cfg.server())
	} else {
		if _, err := os.Stat(cfg.ResolvedRunDir); err != nil {
			return a, fmt.Errorf("%w (%s has no networkd .network file in %s; %v)", ErrNoResolver, link.Name, cfg.NetifLinksDir, err)
		}
		a.Kind, a.Path = KindResolved, filepath.Join(cfg.ResolvedDropInDir, DropInName)
		content = resolvedDropIn(cfg.server())
	}

	reload := map[string]bool{}
	a.Written, err = writeIfDifferent(a.Path, content)
	if err != nil {
		return a, err
	}
	reload[a.Kind] = a.Written
	if a.Kind == KindNetworkd && !a.Written && state.HasDropIns && !slices.Contains(state.DropIns, a.Path) {
		reload[KindNetworkd] = true
	}

	ours, err := cfg.dropIns()
	if err != nil {
		return a, err
	}
	for _, d := range ours {
		if d.path == a.Path {
			continue
		}
		removed, _, err := removeOurs(d.path)
		if err != nil {
			return a, err
		}
		if removed {
			a.Removed = append(a.Removed, d.path)
			reload[d.kind] = true
		}
	}
	a.Reloaded, err = cfg.reload(reload)
	return a, err
}

// Reverted says what Revert did.
type Reverted struct {
	Removed  []string // our drop-ins, removed
	Foreign  []string // files with our name that we did not write, left alone
	Reloaded []string // kinds reloaded, in order
}

// Revert removes every drop-in of ours (networkd's and resolved's) and
// reloads the daemons whose configuration that changed, which gives the host
// its DHCP-provided DNS servers back. It also reloads networkd when
// networkd's state files say it still applies a drop-in of ours that is gone
// (a crash between the removal and the reload), where networkd reports its
// drop-ins (NETWORK_FILE_DROPINS, newer systemd). Idempotent, and safe after
// a SIGKILL: it needs no state of ours.
func Revert(cfg Config) (Reverted, error) {
	cfg = cfg.withDefaults()
	var r Reverted
	reload := map[string]bool{}
	ours, err := cfg.dropIns()
	if err != nil {
		return r, err
	}
	for _, d := range ours {
		removed, foreign, err := removeOurs(d.path)
		if err != nil {
			return r, err
		}
		if removed {
			r.Removed = append(r.Removed, d.path)
			reload[d.kind] = true
		}
		if foreign {
			r.Foreign = append(r.Foreign, d.path)
		}
	}
	if !reload[KindNetworkd] {
		stale, err := cfg.networkdAppliesOurs()
		if err != nil {
			return r, err
		}
		reload[KindNetworkd] = stale
	}
	r.Reloaded, err = cfg.reload(reload)
	return r, err
}

// reload calls cfg.Reload for every kind set, networkd first, and returns
// the kinds it reloaded.
func (cfg Config) reload(want map[string]bool) ([]string, error) {
	var done []string
	var errs []error
	for _, kind := range []string{KindNetworkd, KindResolved} {
		if !want[kind] {
			continue
		}
		if err := cfg.Reload(kind); err != nil {
			errs = append(errs, fmt.Errorf("hostdns: reload %s: %w", kind, err))
			continue
		}
		done = append(done, kind)
	}
	return done, errors.Join(errs...)
}

type dropIn struct {
	kind, path string
}

// dropIns lists the files named DropInName in networkd's runtime drop-in
// directories and in resolved's, whoever wrote them.
func (cfg Config) dropIns() ([]dropIn, error) {
	var out []dropIn
	matches, err := filepath.Glob(filepath.Join(cfg.NetworkRunDir, "*.network.d", DropInName))
	if err != nil {
		return nil, fmt.Errorf("hostdns: list networkd drop-ins: %w", err)
	}
	for _, m := range matches {
		out = append(out, dropIn{KindNetworkd, m})
	}
	p := filepath.Join(cfg.ResolvedDropInDir, DropInName)
	if _, err := os.Lstat(p); err == nil {
		out = append(out, dropIn{KindResolved, p})
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("hostdns: %w", err)
	}
	return out, nil
}

// networkdAppliesOurs reports whether a link state file lists a drop-in of
// ours under NetworkRunDir that no longer exists.
func (cfg Config) networkdAppliesOurs() (bool, error) {
	entries, err := os.ReadDir(cfg.NetifLinksDir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("hostdns: %w", err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		st, err := readLinkState(filepath.Join(cfg.NetifLinksDir, e.Name()))
		if err != nil {
			return false, err
		}
		for _, d := range st.DropIns {
			if filepath.Base(d) != DropInName || filepath.Dir(filepath.Dir(d)) != filepath.Clean(cfg.NetworkRunDir) {
				continue
			}
			if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
				return true, nil
			}
		}
	}
	return false, nil
}

// writeIfDifferent writes content to path atomically (a temporary file in the
// same directory, renamed over it), mode 0644, unless path holds it already.
// It refuses to replace a file we did not write.
func writeIfDifferent(path string, content []byte) (bool, error) {
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, content):
		return false, nil
	case err == nil && !bytes.HasPrefix(old, []byte(header)):
		return false, fmt.Errorf("hostdns: %s exists and was not written by localdns; not replacing it", path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("hostdns: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("hostdns: %w", err)
	}
	// The temporary name does not end in .conf: systemd never reads it.
	if err := atomicfile.Write(path, 0o644, func(w io.Writer) error { _, err := w.Write(content); return err }); err != nil {
		return false, fmt.Errorf("hostdns: %w", err)
	}
	return true, nil
}

// removeOurs removes path if we wrote it (it starts with our header), and
// then its directory if that is left empty. It reports whether it removed
// the file, and whether the file is someone else's (left alone); a missing
// file is neither, and no error.
func removeOurs(path string) (removed, foreign bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("hostdns: %w", err)
	}
	if !bytes.HasPrefix(data, []byte(header)) {
		return false, true, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, false, fmt.Errorf("hostdns: %w", err)
	}
	// Only succeeds when empty: a directory with other drop-ins stays.
	_ = os.Remove(filepath.Dir(path))
	return true, false, nil
}
