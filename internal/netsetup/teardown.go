package netsetup

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Teardown removes everything EnsureAddresses and EnsureRules installed: our
// nftables table, our addresses (from "lo") or our dummy link, and the state
// file. With Config.Fallback set it installs the fallback first, in the same
// transaction that removes the conntrack bypass, so that queries to the
// listeners keep reaching the upstreams (pods keep the listener address in
// their resolv.conf); without routes it leaves a fallback already in place.
// Purge removes the fallback too. It is idempotent and
// is safe after a SIGKILL:
//
//   - with the state file it removes the recorded table, the addresses recorded
//     as added by us on "lo" (an address found there is left alone) or the
//     recorded dummy link;
//   - without it (or when it is unreadable) it removes table Config.Table, the
//     IPv4 addresses on "lo" that carry our label "lo:<LinkName>", the IPv6
//     listener addresses on "lo" (IPv6 has no labels: one there that someone
//     else configured is removed too), and the link Config.LinkName if it is a
//     dummy link.
//
// It never removes a link that is not a dummy link, nor an IPv4 address on
// "lo" that we neither added nor labelled.
func Teardown(cfg Config) error { return teardownOrPurge(cfg, false) }

// Purge is Teardown without a fallback: it removes the fallback table as
// well, and leaves the node as it was before localdns was installed. For
// an uninstall; pods that still have a listener address in their
// resolv.conf get no answer after it.
func Purge(cfg Config) error { return teardownOrPurge(cfg, true) }

func teardownOrPurge(cfg Config, purge bool) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if err := teardown(cfg, purge); err != nil {
		cfg.Metrics.SetupError(StepTeardown)
		return err
	}
	return nil
}

func teardown(cfg Config, purge bool) error {
	// An unreadable state file is no reason to leave things behind: fall
	// back to what the configuration says, and remove the file at the end.
	st, _ := loadState(cfg)

	var errs []error
	var stale []string
	if st != nil && st.Table != "" && st.Table != cfg.Table {
		stale = append(stale, st.Table)
	}
	// The fallback (or, on purge, its removal) comes first: the listener
	// addresses are still there until it is in place. Without routes a
	// fallback already in place (the socket unit's) is left alone: it
	// answers better than nothing.
	var err error
	switch {
	case purge:
		err = deleteTables(cfg, append(stale, cfg.Table, cfg.FallbackTable))
	case len(cfg.Fallback) > 0:
		err = installFallback(cfg, stale)
	default:
		err = deleteTables(cfg, append(stale, cfg.Table))
	}
	if err != nil {
		errs = append(errs, err)
	}

	h, err := cfg.netlinkHandle()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer h.Close()

	switch {
	case st != nil && st.Link == loopback:
		errs = append(errs, removeLoAddrs(h, cfg, st.Owned))
	case st != nil && st.Link != "":
		if st.CreatedLink {
			errs = append(errs, deleteDummy(h, st.Link))
		}
	default:
		var v6 []netip.Addr
		for _, a := range cfg.Addrs {
			if a.Is6() {
				v6 = append(v6, a)
			}
		}
		errs = append(errs, removeLoAddrs(h, cfg, v6), deleteDummy(h, cfg.LinkName))
	}
	if err := errors.Join(errs...); err != nil {
		return err // keep the state file: a retry still knows what is ours
	}
	return removeState(cfg)
}

// removeLoAddrs removes from lo the addresses in owned and every IPv4 address
// carrying our label.
func removeLoAddrs(h *netlink.Handle, cfg Config, owned []netip.Addr) error {
	lo, err := h.LinkByName(loopback)
	if err != nil {
		return fmt.Errorf("netsetup: looking up lo: %w", err)
	}
	have, err := hostAddrs(h, lo)
	if err != nil {
		return err
	}
	var errs []error
	for a, na := range have {
		if !slices.Contains(owned, a) && !(a.Is4() && na.Label == loLabel(cfg)) {
			continue
		}
		if err := h.AddrDel(lo, &na); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("netsetup: removing %s from lo: %w", a, err))
		}
	}
	return errors.Join(errs...)
}

// deleteDummy deletes link name if it exists and is a dummy link.
func deleteDummy(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netsetup: looking up link %s: %w", name, err)
	}
	if l.Type() != "dummy" {
		return nil // not ours
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("netsetup: deleting link %s: %w", name, err)
	}
	return nil
}
