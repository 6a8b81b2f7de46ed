package hostdns

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is a network interface.
type Link struct {
	Name  string
	Index int
}

// link returns cfg.Interface, or the link of the default route.
func (cfg Config) link() (Link, error) {
	h, err := cfg.netlinkHandle()
	if err != nil {
		return Link{}, err
	}
	defer h.Close()
	if cfg.Interface != "" {
		l, err := h.LinkByName(cfg.Interface)
		if err != nil {
			return Link{}, fmt.Errorf("hostdns: interface %s: %w", cfg.Interface, err)
		}
		return Link{Name: l.Attrs().Name, Index: l.Attrs().Index}, nil
	}
	return defaultRouteLink(h)
}

// DefaultRouteLink returns the link of the default route with the lowest
// metric in the main routing table: IPv4 first, IPv6 when there is no IPv4
// default route. Routes whose link has no carrier (linkdown) come last. It
// reads the routing table only; no packet is sent.
func DefaultRouteLink(cfg Config) (Link, error) {
	h, err := cfg.netlinkHandle()
	if err != nil {
		return Link{}, err
	}
	defer h.Close()
	return defaultRouteLink(h)
}

// netlinkHandle returns a handle in cfg.NetNS, or in the caller's namespace.
func (cfg Config) netlinkHandle() (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if cfg.NetNS > 0 {
		h, err = netlink.NewHandleAt(cfg.NetNS)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("hostdns: netlink handle: %w", err)
	}
	return h, nil
}

func defaultRouteLink(h *netlink.Handle) (Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return Link{}, fmt.Errorf("hostdns: list routes: %w", err)
		}
		best, found := netlink.Route{}, false
		for _, r := range routes {
			if !isDefault(r) || r.Type != unix.RTN_UNICAST {
				continue
			}
			if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
				r.LinkIndex = r.MultiPath[0].LinkIndex // ECMP: the first next hop
			}
			if r.LinkIndex == 0 {
				continue
			}
			if !found || better(r, best) {
				best, found = r, true
			}
		}
		if !found {
			continue
		}
		l, err := h.LinkByIndex(best.LinkIndex)
		if err != nil {
			return Link{}, fmt.Errorf("hostdns: link %d of the default route: %w", best.LinkIndex, err)
		}
		return Link{Name: l.Attrs().Name, Index: best.LinkIndex}, nil
	}
	return Link{}, errors.New("hostdns: no default route")
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.Equal(zero(r.Dst.IP))
}

func zero(ip net.IP) net.IP {
	if ip.To4() != nil {
		return net.IPv4zero
	}
	return net.IPv6zero
}

// better orders default routes: with carrier before linkdown, then by
// metric, then by ifindex (for a stable answer).
func better(a, b netlink.Route) bool {
	da, db := a.Flags&unix.RTNH_F_LINKDOWN != 0, b.Flags&unix.RTNH_F_LINKDOWN != 0
	if da != db {
		return db
	}
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	return a.LinkIndex < b.LinkIndex
}
