package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// stubResolvers are local stubs that are never a VNet DNS server: forwarding
// to systemd-resolved's stub would send our queries back to the host
// resolver, which on a node points at our own node listener.
var stubResolvers = []netip.Addr{
	netip.MustParseAddr("127.0.0.53"),
	netip.MustParseAddr("127.0.0.54"),
}

// DiscoverVNetDNS reads the first existing file of paths and returns its
// nameservers, dropping our own listener addresses (loop) and the
// systemd-resolved stubs. It also returns the file it read.
func DiscoverVNetDNS(paths []string, own ...netip.Addr) ([]Upstream, string, error) {
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, path, fmt.Errorf("read %s: %w", path, err)
		}
		servers := parseResolvConf(data)
		var out []Upstream
	next:
		for _, s := range servers {
			for _, skip := range append(append([]netip.Addr(nil), stubResolvers...), own...) {
				if s == skip {
					continue next
				}
			}
			out = append(out, netip.AddrPortFrom(s, 53))
		}
		if len(out) == 0 {
			return nil, path, fmt.Errorf("%s lists no usable nameserver (found %v; our listeners and the 127.0.0.53 stub are skipped)", path, servers)
		}
		return out, path, nil
	}
	return nil, "", fmt.Errorf("none of %s exists", strings.Join(paths, ", "))
}

func parseResolvConf(data []byte) []netip.Addr {
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
