package daemon

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/hostdns"
	"github.com/localdns/localdns/internal/netsetup"
)

// TeardownOptions say what Teardown keeps and removes.
type TeardownOptions struct {
	// KeepIfHeld keeps everything while a socket is bound to a listener.
	KeepIfHeld bool
	// Purge removes the fallback too (an uninstall).
	Purge bool
	// ProfileBroken: the profile did not load and p holds the defaults;
	// the fallback file of the last valid profile is used instead.
	ProfileBroken bool
}

// TeardownResult says what Teardown did.
type TeardownResult struct {
	Kept bool   // addresses and rules left in place
	Why  string // why they were kept
	// FallbackFrom says where the fallback routes came from ("" if none
	// was installed); NoFallback why none was.
	FallbackFrom, NoFallback string
}

// Teardown removes every link, address and rule localdns installed for p.
// It is idempotent and safe after a SIGKILL (netsetup keeps a state file).
//
// With keepIfHeld, it leaves everything in place while a socket is still
// bound to a listener address: that is systemd's socket unit holding the
// sockets across a restart of the service, and the kernel must keep
// delivering (and queueing) queries to those addresses for the next process.
// The service's ExecStopPost uses keepIfHeld; the socket unit's ExecStopPost
// does not, so stopping both removes everything.
//
// Unless purge is set, the fallback takes the listeners over (pods that
// have a listener address in their resolv.conf keep resolving): with routes
// from p's upstreams, or from the fallback file of the last valid profile.
// purge removes the fallback and the fallback file as well: the node as it
// was before localdns.
func Teardown(p *config.Profile, opts TeardownOptions) (TeardownResult, error) {
	if opts.KeepIfHeld {
		for _, a := range []netip.Addr{p.NodeListener, p.ClusterListener} {
			held, err := socketBound(netip.AddrPortFrom(a, p.Port))
			if err != nil {
				return TeardownResult{}, fmt.Errorf("check for sockets held on the listeners: %w", err)
			}
			if held != "" {
				return TeardownResult{Kept: true, Why: fmt.Sprintf("a %s socket is still bound to %s (systemd's socket unit): the next localdns takes over", held, netip.AddrPortFrom(a, p.Port))}, nil
			}
		}
	}
	// The host resolver goes back to DHCP's servers first, so the host never
	// points at an address that is about to disappear.
	if _, err := hostdns.Revert(hostdns.Config{Listener: p.NodeListener, Port: p.Port, Interface: p.HostResolver.Interface}); err != nil {
		return TeardownResult{}, fmt.Errorf("revert host resolver: %w", err)
	}
	cfg := NetworkConfig(p, nil)
	res := TeardownResult{}
	var fb netsetup.Config
	var err error
	if opts.ProfileBroken {
		// p holds the defaults; the fallback file knows what the last
		// valid profile installed, routes included.
		if fb, res.FallbackFrom, err = FallbackConfig(nil); err == nil {
			cfg = fb
		}
	} else {
		fb, res.FallbackFrom, err = FallbackConfig(p)
		cfg.Fallback = fb.Fallback
	}
	if err != nil {
		res.NoFallback = err.Error()
	}
	if opts.Purge {
		if err := netsetup.Purge(cfg); err != nil {
			return TeardownResult{}, err
		}
		if f := p.Network.FallbackFile; f != "" {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return TeardownResult{}, fmt.Errorf("remove the fallback file: %w", err)
			}
		}
		return TeardownResult{}, nil
	}
	if err := netsetup.Teardown(cfg); err != nil {
		return TeardownResult{}, err
	}
	return res, nil
}

// socketBound reports "udp" or "tcp" when a socket in this network namespace
// is bound to ap (a listening one for TCP), from /proc/net.
func socketBound(ap netip.AddrPort) (string, error) {
	files := map[string][]string{"udp": {"/proc/net/udp", "/proc/net/udp6"}, "tcp": {"/proc/net/tcp", "/proc/net/tcp6"}}
	for _, proto := range []string{"udp", "tcp"} {
		for _, f := range files[proto] {
			found, err := procNetHas(f, ap, proto == "tcp")
			if err != nil {
				return "", err
			}
			if found {
				return proto, nil
			}
		}
	}
	return "", nil
}

func procNetHas(path string, ap netip.AddrPort, listenOnly bool) (bool, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		if listenOnly && fields[3] != "0A" {
			continue
		}
		local, err := parseProcAddr(fields[1])
		if err != nil {
			continue
		}
		if local.Port() == ap.Port() && local.Addr().Unmap() == ap.Addr().Unmap() {
			return true, nil
		}
	}
	return false, sc.Err()
}

// parseProcAddr parses /proc/net's "0A0AFEA9:0035" (IPv4 as a little-endian
// 32-bit word, IPv6 as four of them) into an address and port.
func parseProcAddr(s string) (netip.AddrPort, error) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(host)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	pn, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", s)
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a, uint16(pn)), nil
}
