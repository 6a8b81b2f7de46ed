package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// stubResolvers are local stubs that are never a VNet DNS server: forwarding
// to systemd-resolved's stub would send our queries back to the host
// resolver, which on a node points at our own node listener.
var stubResolvers = []netip.Addr{
	netip.MustParseAddr("127.0.0.53"),
	netip.MustParseAddr("127.0.0.54"),
}

// DiscoverVNetDNS returns the nameservers of the first of paths that lists
// a usable one, dropping our own listener addresses (loop) and the
// systemd-resolved stubs, and the file they came from. A file that is
// missing, unreadable or lists nothing usable is skipped; when no file
// remains the error says what each one held.
func DiscoverVNetDNS(paths []string, own ...netip.Addr) ([]Upstream, string, error) {
	if len(paths) == 0 {
		return nil, "", errors.New("no resolv.conf file to read")
	}
	skip := append(append([]netip.Addr(nil), stubResolvers...), own...)
	var why []string
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			why = append(why, path+" does not exist")
			continue
		}
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		servers := ParseResolvConf(data)
		var out []Upstream
		for _, s := range servers {
			u := netip.AddrPortFrom(s, 53)
			if !slices.Contains(skip, s) && !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
		if len(out) == 0 {
			why = append(why, fmt.Sprintf("%s lists no usable nameserver (found %v)", path, servers))
			continue
		}
		return out, path, nil
	}
	return nil, "", fmt.Errorf("no VNet DNS server found (localdns's listeners %v and the stubs %v are never used): %s",
		own, stubResolvers, strings.Join(why, "; "))
}

// ParseResolvConf returns the nameserver addresses of a resolv.conf, in
// order (IPv4-mapped addresses unmapped; addresses with a zone left out).
func ParseResolvConf(data []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || a.Zone() != "" {
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

// Upstreams are the servers each forward destination resolves to.
type Upstreams struct {
	Cluster []Upstream
	VNet    []Upstream
	// VNetSource names the resolv.conf the VNet servers came from, if auto.
	VNetSource string
}

// ResolveUpstreams turns the profile's upstream settings into addresses,
// running auto discovery where asked.
func (p *Profile) ResolveUpstreams() (Upstreams, error) {
	u := Upstreams{Cluster: p.ClusterDNS, VNet: p.VNetDNS}
	if p.VNetDNSAuto {
		vnet, src, err := DiscoverVNetDNS(p.ResolvConf, p.NodeListener, p.ClusterListener)
		if err != nil {
			return u, fmt.Errorf("discover VNet DNS: %w", err)
		}
		u.VNet, u.VNetSource = vnet, src
	}
	if p.ClusterDNSAuto {
		u.Cluster = u.VNet
	}
	return u, nil
}
