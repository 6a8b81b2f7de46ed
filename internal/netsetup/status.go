package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// State is what Status found, for `localdns status`.
type State struct {
	// Link is the link that should carry the addresses: the one recorded in
	// the state file, else Config.LinkName if it exists, else "lo".
	Link string
	// Fallback and Reason are as recorded by EnsureAddresses.
	Fallback bool
	Reason   string
	// StateFile is true when a state file was found.
	StateFile bool
	// LinkPresent and LinkUp describe Link.
	LinkPresent, LinkUp bool
	// Addrs lists every listener address and whether Link carries it.
	Addrs []AddrState
	// Table is true when our nftables table exists; Rules counts the rules in
	// it that carry our comment, WantRules how many the configuration wants.
	Table            bool
	Rules, WantRules int
	// NotrackPackets is the sum of the rules' packet counters: packets that
	// skipped conntrack since the table was last (re)installed.
	NotrackPackets uint64
	// RulesIntact is true when table, chains and rules are exactly what
	// EnsureRules installs; RulesDiff says what differs otherwise.
	RulesIntact bool
	RulesDiff   string
}

// AddrState is one listener address and whether it is in place.
type AddrState struct {
	Addr    netip.Addr
	Present bool
}

// Status reports what is installed, changing nothing.
func Status(cfg Config) (State, error) {
	var s State
	cfg, err := cfg.withDefaults()
	if err != nil {
		return s, err
	}
	st, err := loadState(cfg)
	if err != nil {
		return s, err
	}
	h, err := cfg.netlinkHandle()
	if err != nil {
		return s, err
	}
	defer h.Close()

	var link netlink.Link
	var notFound netlink.LinkNotFoundError
	switch {
	case st != nil && st.Link != "":
		s.StateFile = true
		s.Link, s.Fallback, s.Reason = st.Link, st.Fallback, st.Reason
	default:
		s.StateFile = st != nil
		s.Link = cfg.LinkName
		if _, err := h.LinkByName(cfg.LinkName); errors.As(err, &notFound) {
			s.Link = loopback
		}
	}
	link, err = h.LinkByName(s.Link)
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return s, fmt.Errorf("netsetup: looking up link %s: %w", s.Link, err)
	default:
		s.LinkPresent = true
		s.LinkUp = link.Attrs().Flags&net.FlagUp != 0
	}
	have := map[netip.Addr]netlink.Addr{}
	if s.LinkPresent {
		if have, err = hostAddrs(h, link); err != nil {
			return s, err
		}
	}
	for _, a := range cfg.Addrs {
		_, ok := have[a]
		s.Addrs = append(s.Addrs, AddrState{Addr: a, Present: ok})
	}

	rc, err := checkRules(cfg)
	if err != nil {
		return s, err
	}
	s.Table, s.Rules, s.RulesIntact, s.RulesDiff = rc.table, rc.rules, rc.intact, rc.why
	s.NotrackPackets = rc.hits
	s.WantRules = len(wantRules(cfg))
	return s, nil
}
