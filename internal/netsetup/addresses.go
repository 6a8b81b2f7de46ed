package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// loopback is the link that carries the addresses where there is no dummy link.
const loopback = "lo"

// Result says where EnsureAddresses put the addresses and what it changed.
type Result struct {
	// Link is the link that carries the addresses: Config.LinkName, or "lo".
	Link string
	// Fallback is true when the addresses are on "lo" because the kernel has
	// no dummy link type; Reason says why, for the log.
	Fallback bool
	Reason   string
	// CreatedLink is true when this call created the dummy link.
	CreatedLink bool
	// LinkSetUp is true when this call set the link up.
	LinkSetUp bool
	// Added are the addresses this call added.
	Added []netip.Addr
	// Removed are addresses of ours that are no longer configured and that
	// this call removed.
	Removed []netip.Addr
}

// Changed reports whether the call changed anything.
func (r Result) Changed() bool {
	return r.CreatedLink || r.LinkSetUp || len(r.Added) > 0 || len(r.Removed) > 0
}

// EnsureAddresses makes sure the link exists, is up and carries every listener
// address, and records the choice of link in the state file. Call it before the
// DNS servers bind. It is idempotent: a second call adds nothing.
//
// The dummy link Config.LinkName is created if missing; an existing dummy link
// of that name is taken as ours. Where the kernel has no dummy link type, the
// addresses go on "lo" (Result.Fallback; log Result.Reason) and stay there for
// as long as the state file says so. IPv4 addresses on "lo" carry the label
// "lo:<LinkName>" so that they can be told from addresses someone else put
// there. Addresses of ours that are no longer in Config.Addrs are removed.
func EnsureAddresses(cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, err
	}
	res, step, err := ensureAddresses(cfg)
	if err != nil {
		cfg.Metrics.SetupError(step)
	}
	return res, err
}

func ensureAddresses(cfg Config) (Result, string, error) {
	var res Result
	st, err := loadState(cfg)
	if err != nil {
		return res, StepState, err
	}
	if st == nil {
		st = &state{}
	}
	h, err := cfg.netlinkHandle()
	if err != nil {
		return res, StepLink, err
	}
	defer h.Close()

	link, err := ensureLink(h, cfg, st, &res)
	if err != nil {
		return res, StepLink, err
	}
	res.Link, res.Fallback, res.Reason = st.Link, st.Fallback, st.Reason

	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return res, StepLink, fmt.Errorf("netsetup: setting link %s up: %w", st.Link, err)
		}
		res.LinkSetUp = true
	}

	// Save what we know before touching addresses, and again after: a crash
	// in between leaves a state file that at least names the link.
	if err := saveState(cfg, st); err != nil {
		return res, StepState, err
	}
	aerr := ensureLinkAddrs(h, cfg, st, link, &res)
	if err := saveState(cfg, st); err != nil {
		return res, StepState, errors.Join(aerr, err)
	}
	if aerr != nil {
		return res, StepAddress, aerr
	}
	return res, "", nil
}

// ensureLink finds or creates the link that carries the addresses and records
// it in st.
func ensureLink(h *netlink.Handle, cfg Config, st *state, res *Result) (netlink.Link, error) {
	if st.CreatedLink && st.Link != "" && st.Link != loopback && st.Link != cfg.LinkName {
		// The link was renamed in the configuration: the old one goes.
		if err := deleteDummy(h, st.Link); err != nil {
			return nil, err
		}
		st.Link, st.CreatedLink, st.Owned = "", false, nil
	}
	if !(st.Fallback && st.Link == loopback) {
		l, err := h.LinkByName(cfg.LinkName)
		var notFound netlink.LinkNotFoundError
		switch {
		case err == nil:
			if l.Type() != "dummy" {
				return nil, fmt.Errorf("netsetup: link %s exists and is of type %s, not dummy: not ours, refusing to use it", cfg.LinkName, l.Type())
			}
			st.Link, st.CreatedLink, st.Fallback, st.Reason = cfg.LinkName, true, false, ""
			return l, nil
		case errors.As(err, &notFound):
		default:
			return nil, fmt.Errorf("netsetup: looking up link %s: %w", cfg.LinkName, err)
		}

		err = h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: cfg.LinkName}})
		switch {
		case err == nil:
			st.Link, st.CreatedLink, st.Fallback, st.Reason = cfg.LinkName, true, false, ""
			res.CreatedLink = true
			l, err := h.LinkByName(cfg.LinkName)
			if err != nil {
				return nil, fmt.Errorf("netsetup: looking up link %s after creating it: %w", cfg.LinkName, err)
			}
			return l, nil
		case errors.Is(err, unix.EOPNOTSUPP):
			st.Link, st.CreatedLink, st.Fallback = loopback, false, true
			st.Reason = fmt.Sprintf("kernel has no dummy link type (creating link %s: %v); listener addresses are on lo", cfg.LinkName, err)
		default:
			return nil, fmt.Errorf("netsetup: creating dummy link %s: %w", cfg.LinkName, err)
		}
	}
	l, err := h.LinkByName(loopback)
	if err != nil {
		return nil, fmt.Errorf("netsetup: looking up lo: %w", err)
	}
	return l, nil
}

// loLabel is the label of our IPv4 addresses on lo ("lo:localdns").
func loLabel(cfg Config) string {
	l := loopback + ":" + cfg.LinkName
	if len(l) > 15 {
		l = l[:15]
	}
	return l
}

// netlinkAddr returns a as a host prefix (/32 or /128) for link.
func netlinkAddr(cfg Config, a netip.Addr, link string) *netlink.Addr {
	na := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(a.AsSlice()),
		Mask: net.CIDRMask(a.BitLen(), a.BitLen()),
	}}
	if a.Is6() {
		// No duplicate address detection: the address is usable (bindable)
		// at once, and nothing else on the node may own it anyway.
		na.Flags = unix.IFA_F_NODAD
	} else if link == loopback {
		na.Label = loLabel(cfg)
	}
	return na
}

// hostAddrs returns the host prefixes (/32, /128) on link, by address.
func hostAddrs(h *netlink.Handle, link netlink.Link) (map[netip.Addr]netlink.Addr, error) {
	list, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("netsetup: listing addresses of %s: %w", link.Attrs().Name, err)
	}
	m := make(map[netip.Addr]netlink.Addr, len(list))
	for _, na := range list {
		a, ok := netip.AddrFromSlice(na.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if ones, bits := na.Mask.Size(); ones != bits || bits != a.BitLen() {
			continue
		}
		m[a] = na
	}
	return m, nil
}

// ensureLinkAddrs adds the missing listener addresses to link and removes
// ours that are no longer configured, recording ownership in st.
func ensureLinkAddrs(h *netlink.Handle, cfg Config, st *state, link netlink.Link, res *Result) error {
	have, err := hostAddrs(h, link)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range cfg.Addrs {
		if na, ok := have[a]; ok {
			// Present already. On our dummy link everything is ours; on lo
			// only what we added (state) or what carries our label.
			if st.Link != loopback || na.Label == loLabel(cfg) {
				st.own(a)
			}
			continue
		}
		err := h.AddrAdd(link, netlinkAddr(cfg, a, st.Link))
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("netsetup: adding %s to %s: %w", a, st.Link, err))
			continue
		}
		st.own(a)
		res.Added = append(res.Added, a)
	}
	for _, a := range slices.Clone(st.Owned) {
		if slices.Contains(cfg.Addrs, a) {
			continue
		}
		if na, ok := have[a]; ok {
			if err := h.AddrDel(link, &na); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("netsetup: removing stale %s from %s: %w", a, st.Link, err))
				continue
			}
			res.Removed = append(res.Removed, a)
		}
		st.disown(a)
	}
	return errors.Join(errs...)
}
