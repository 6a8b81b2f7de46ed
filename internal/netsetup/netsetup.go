// Package netsetup installs and removes what localdns needs in the kernel's
// network stack: the link-local listener addresses (netlink) and the conntrack
// bypass for DNS to and from them (nftables).
//
// What it installs:
//
//   - A link named Config.LinkName ("localdns") of type dummy, up, carrying each
//     listener address as a /32 (/128 for IPv6, without DAD so a listener can
//     bind at once). Where the kernel has no dummy link type the addresses go on
//     "lo" instead, and Result.Fallback says so, with the reason, for the log.
//   - One nftables table of our own, "inet localdns" (Config.Table), with two
//     base chains at raw priority (-300): prerouting (queries from pods) and
//     output (queries from the host, and our replies). Every rule is a notrack
//     for UDP and TCP to/from the listener addresses on Config.Port and carries
//     the comment "localdns: skip conntrack". The table is written in one
//     atomic netlink batch (add table, delete table, add table, chains, rules),
//     so re-running replaces it and never duplicates a rule.
//
// Why not what the systems we replace do: AKS LocalDNS and NodeLocal DNSCache
// shell out to iptables, which left duplicate rules behind, contended on the
// xtables lock and broke where the binary was missing; and they found their
// rules again by grepping comments. A table of our own is replaced atomically,
// is removed with one delete, and needs no binary.
//
// Ownership and crashes: EnsureAddresses records in a small JSON file under
// Config.StateDir which link got the addresses, whether we created it and which
// addresses on "lo" we added (as opposed to found there); IPv4 addresses we add
// to "lo" also carry the label "lo:<LinkName>". Teardown reads the file, so
// that after a SIGKILL `localdns teardown` removes exactly what we installed.
// Without the file (state dir wiped, or never written) Teardown removes the
// dummy link named Config.LinkName, the IPv4 addresses on "lo" that carry our
// label and the configured IPv6 addresses on "lo": an IPv6 address there that
// someone else configured and that equals one of ours is then removed too
// (IPv6 addresses have no labels). That is the one edge the state file avoids.
//
// The daemon's order (README.md, "How a query is served"): EnsureAddresses before the DNS servers
// bind, EnsureRules only after every listener answered a self-probe (a bypass in
// front of a server that does not answer black-holes DNS), Reconcile
// periodically after that, Teardown on stop and in ExecStopPost.
//
// Functions that take a Config are not safe for concurrent use on the same
// Config; the daemon calls them from one goroutine.
package netsetup

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Defaults applied to a zero field of Config.
const (
	DefaultLinkName = "localdns"
	DefaultTable    = "localdns"
	DefaultPort     = 53
)

// RuleComment is the comment (nftables user data) on every rule we install.
const RuleComment = "localdns: skip conntrack"

// Config says what to install and where.
type Config struct {
	// LinkName is the dummy link that carries the listener addresses
	// (default "localdns"). At most 15 bytes (IFNAMSIZ).
	LinkName string
	// Addrs are the listener addresses, e.g. 169.254.10.10 and 169.254.10.11.
	Addrs []netip.Addr
	// Port is the DNS port the bypass covers (default 53).
	Port uint16
	// Table is the name of our table in the inet family (default "localdns").
	Table string
	// ReplyNotrack also skips conntrack for our replies (sport Port from the
	// listener addresses, in output). Without it every reply to an untracked
	// query creates a conntrack entry of its own. Switch it off only for a CNI
	// that drops untracked replies (see README.md).
	ReplyNotrack bool
	// StateDir holds the state file that records which link got the addresses
	// and which addresses we added (e.g. /run/localdns). Empty: no state file,
	// and Teardown works from Config alone (see the package doc).
	StateDir string
	// NetNS, when > 0, is the network namespace to operate in (tests); 0 or
	// netns.None() means the namespace of the calling process.
	NetNS netns.NsHandle
	// Metrics, when not nil, counts repairs and setup errors.
	Metrics *Metrics
	// Fallback routes each listener's queries to its upstreams while
	// localdns does not serve (InstallFallback, Teardown). Empty: Teardown
	// leaves nothing behind and the listeners then answer nothing.
	Fallback []FallbackRoute
	// FallbackTable is the name of the fallback's table in the inet family
	// (default "localdns-fallback").
	FallbackTable string
}

// withDefaults returns cfg with defaults filled in and validates it.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.LinkName == "" {
		cfg.LinkName = DefaultLinkName
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.FallbackTable == "" {
		cfg.FallbackTable = DefaultFallbackTable
	}
	if cfg.FallbackTable == cfg.Table {
		return cfg, fmt.Errorf("netsetup: fallback table and conntrack-bypass table are both %q", cfg.Table)
	}
	if len(cfg.LinkName) > 15 {
		return cfg, fmt.Errorf("netsetup: link name %q longer than 15 bytes", cfg.LinkName)
	}
	if cfg.LinkName == "lo" {
		return cfg, errors.New(`netsetup: link name "lo" is reserved for the fallback`)
	}
	if len(cfg.Table) > 255 {
		return cfg, fmt.Errorf("netsetup: table name %q too long", cfg.Table)
	}
	if len(cfg.Addrs) == 0 {
		return cfg, errors.New("netsetup: no listener addresses")
	}
	addrs := make([]netip.Addr, 0, len(cfg.Addrs))
	seen := make(map[netip.Addr]bool, len(cfg.Addrs))
	for _, a := range cfg.Addrs {
		if !a.IsValid() {
			return cfg, errors.New("netsetup: invalid listener address")
		}
		a = a.Unmap()
		if a.Zone() != "" {
			return cfg, fmt.Errorf("netsetup: listener address %s has a zone", a)
		}
		if a.IsUnspecified() || a.IsMulticast() {
			return cfg, fmt.Errorf("netsetup: listener address %s is not a unicast address", a)
		}
		if seen[a] {
			return cfg, fmt.Errorf("netsetup: listener address %s given twice", a)
		}
		seen[a] = true
		addrs = append(addrs, a)
	}
	cfg.Addrs = addrs
	return cfg, nil
}

// inNS reports whether cfg names a network namespace other than our own.
func (cfg Config) inNS() bool { return cfg.NetNS > 0 }

// netlinkHandle returns a netlink handle in cfg's namespace.
func (cfg Config) netlinkHandle() (*netlink.Handle, error) {
	if cfg.inNS() {
		h, err := netlink.NewHandleAt(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("netsetup: netlink handle in netns %s: %w", cfg.NetNS, err)
		}
		return h, nil
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netsetup: netlink handle: %w", err)
	}
	return h, nil
}

// nftConn returns an nftables connection in cfg's namespace.
func (cfg Config) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if cfg.inNS() {
		opts = append(opts, nftables.WithNetNSFd(int(cfg.NetNS)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netsetup: nftables connection: %w", err)
	}
	return c, nil
}
