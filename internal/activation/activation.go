// Package activation takes the listening sockets systemd passes to localdns
// (socket activation, LISTEN_FDS/LISTEN_PID) and hands them to the listeners
// they belong to, matched by what each socket IS: its bound address
// (getsockname) and its type (SO_DOMAIN, SO_TYPE, SO_PROTOCOL, SO_ACCEPTCONN).
//
// Why socket activation: localdns.socket owns 169.254.10.10:53 and
// 169.254.10.11:53 (UDP and TCP) and outlives every restart of
// localdns.service. While the process is replaced (upgrade, crash, watchdog
// kill) the kernel keeps queueing queries on those sockets, and the new
// process answers them from the same socket instead of pods seeing
// "connection refused" or timeouts: the 5-20 s of DNS loss per restart that
// node-local-dns and AKS LocalDNS both have goes away.
//
// Why match by address and not by order or name: the order of LISTEN_FDS
// follows the unit's Listen* lines and changes with any edit or drop-in, and
// FileDescriptorName= is optional and shared by all sockets of a unit. A
// socket's bound address and type are facts the kernel reports; matching on
// them cannot hand the cluster listener's socket to the node listener. (The
// go-systemd helpers this builds on, activation.Listeners/PacketConns, return
// sockets by position only.)
//
// Use:
//
//	set, err := activation.Inherited()   // once, early; unsets LISTEN_*
//	for _, l := range listeners {
//		udp, tcp, ok := set.Take(l.Addr) // either may be nil: bind it yourself
//		...
//	}
//	for _, s := range set.Release() {    // sockets nobody took, now closed
//		log.Warningf("unused socket from systemd: %s", s)
//	}
//
// Serving: CoreDNS's caddy binds its own listeners and has no hook to accept a
// socket, so the daemon serves inherited sockets itself (dnsserver.Server's
// ServePacket/Serve, or its own front). Take returns the concrete
// *net.UDPConn and *net.TCPListener, so the same sockets also serve a
// recvmmsg fast path and fit a source of the form
// func(addr string) (*net.UDPConn, *net.TCPListener, error) that binds
// whatever half was not inherited.
//
// Restarts: while socket-activated, the listener addresses must stay on
// their link when the process stops, or queued queries cannot arrive. So the
// daemon leaves the network setup in place on a socket-activated stop, the
// service's ExecStopPost (`teardown --keep-if-held`) keeps it while the
// sockets are held, and localdns.socket's ExecStopPost tears it down when the
// sockets themselves go (see systemd/README.md).
package activation

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// Socket describes an inherited socket that no listener used. Its descriptor
// is closed by the time the caller sees it (systemd keeps its own copy).
type Socket struct {
	Name   string // LISTEN_FDNAMES entry, or LISTEN_FD_<fd>
	Kind   string // "udp", "tcp", or what it is instead ("unix/stream", "not a socket", ...)
	Addr   string // bound address, if it has one
	Reason string // why no listener took it
}

func (s Socket) String() string {
	out := s.Name + " (" + s.Kind
	if s.Addr != "" {
		out += " " + s.Addr
	}
	return out + "): " + s.Reason
}

// Set is the sockets inherited from systemd, by bound address. The zero Set
// (no socket activation) is valid: Take finds nothing and Release returns
// nothing. A Set is not safe for concurrent use.
type Set struct {
	udp     map[netip.AddrPort]inherited[*net.UDPConn]
	tcp     map[netip.AddrPort]inherited[*net.TCPListener]
	unknown []Socket
}

type inherited[C any] struct {
	conn C
	name string
}

// Inherited takes the sockets systemd passed to this process, if any, and
// classifies them. It unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, so it
// must be called once, and so child processes never see them. Sockets that
// are not a UDP socket or a listening TCP socket on an IP address, and
// duplicates of an address already seen, are closed and reported by Release.
//
// With no socket activation (LISTEN_PID unset or naming another process) it
// returns an empty Set and no error. An error means a socket could not be
// turned into a Go connection; the Set then holds nothing and every inherited
// descriptor is closed.
func Inherited() (Set, error) {
	files := activation.Files(true)
	s := Set{
		udp: make(map[netip.AddrPort]inherited[*net.UDPConn]),
		tcp: make(map[netip.AddrPort]inherited[*net.TCPListener]),
	}
	var errs []error
	for _, f := range files {
		if err := s.add(f); err != nil {
			errs = append(errs, err)
		}
		f.Close() // the net.* conns hold their own duplicate
	}
	if err := errors.Join(errs...); err != nil {
		s.Release()
		return Set{}, fmt.Errorf("socket activation: %w", err)
	}
	return s, nil
}

func (s *Set) add(f *os.File) error {
	info, err := classify(f)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	skip := func(reason string) {
		s.unknown = append(s.unknown, Socket{Name: f.Name(), Kind: info.kind, Addr: info.addrString(), Reason: reason})
	}
	if info.reason != "" {
		skip(info.reason)
		return nil
	}
	switch info.kind {
	case "udp":
		if prev, dup := s.udp[info.addr]; dup {
			skip("second udp socket for the address; using " + prev.name)
			return nil
		}
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return fmt.Errorf("%s (udp %s): %w", f.Name(), info.addr, err)
		}
		udp, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return fmt.Errorf("%s (udp %s): got a %T", f.Name(), info.addr, pc)
		}
		s.udp[info.addr] = inherited[*net.UDPConn]{udp, f.Name()}
	case "tcp":
		if prev, dup := s.tcp[info.addr]; dup {
			skip("second tcp socket for the address; using " + prev.name)
			return nil
		}
		l, err := net.FileListener(f)
		if err != nil {
			return fmt.Errorf("%s (tcp %s): %w", f.Name(), info.addr, err)
		}
		tcp, ok := l.(*net.TCPListener)
		if !ok {
			l.Close()
			return fmt.Errorf("%s (tcp %s): got a %T", f.Name(), info.addr, l)
		}
		s.tcp[info.addr] = inherited[*net.TCPListener]{tcp, f.Name()}
	default:
		skip("unsupported socket")
	}
	return nil
}

// Take hands over the UDP socket and the TCP listener bound to addr, if
// systemd passed them; ok reports whether at least one was. A nil return
// means that half was not inherited and the caller binds it itself. The
// returned sockets belong to the caller; taking an address twice finds
// nothing the second time. IPv4-mapped IPv6 addresses match their IPv4 form.
func (s Set) Take(addr netip.AddrPort) (udp *net.UDPConn, tcp *net.TCPListener, ok bool) {
	addr = normalize(addr)
	if u, found := s.udp[addr]; found {
		udp = u.conn
		delete(s.udp, addr)
	}
	if t, found := s.tcp[addr]; found {
		tcp = t.conn
		delete(s.tcp, addr)
	}
	return udp, tcp, udp != nil || tcp != nil
}

// Len is the number of usable sockets not taken yet.
func (s Set) Len() int { return len(s.udp) + len(s.tcp) }

// Release closes every socket no listener took and returns what each one was,
// sorted by name, so the caller can warn about a socket unit that does not
// match the profile. Call it after the last Take.
func (s Set) Release() []Socket {
	out := append([]Socket(nil), s.unknown...)
	for a, u := range s.udp {
		u.conn.Close()
		out = append(out, Socket{Name: u.name, Kind: "udp", Addr: a.String(), Reason: "no listener for this address"})
		delete(s.udp, a)
	}
	for a, t := range s.tcp {
		t.conn.Close()
		out = append(out, Socket{Name: t.name, Kind: "tcp", Addr: a.String(), Reason: "no listener for this address"})
		delete(s.tcp, a)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Kind < out[j].Kind
	})
	return out
}

// sockInfo is what the kernel says an inherited descriptor is.
type sockInfo struct {
	kind   string         // "udp", "tcp", or a description of something else
	addr   netip.AddrPort // for IP sockets
	other  string         // bound address of a non-IP socket
	reason string         // why it is not usable, if it is not
}

func (i sockInfo) addrString() string {
	if i.addr.IsValid() {
		return i.addr.String()
	}
	return i.other
}

// classify inspects fd without changing it (no blocking-mode switch, as
// os.File.Fd would do).
func classify(f *os.File) (sockInfo, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return sockInfo{}, err
	}
	var info sockInfo
	var inner error
	if err := rc.Control(func(fd uintptr) { info, inner = classifyFD(int(fd)) }); err != nil {
		return sockInfo{}, err
	}
	return info, inner
}

func classifyFD(fd int) (sockInfo, error) {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if errors.Is(err, unix.ENOTSOCK) {
		return sockInfo{kind: "not a socket", reason: "not a socket"}, nil
	}
	if err != nil {
		return sockInfo{}, fmt.Errorf("SO_DOMAIN: %w", err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return sockInfo{}, fmt.Errorf("SO_TYPE: %w", err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return sockInfo{}, fmt.Errorf("SO_PROTOCOL: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return sockInfo{}, fmt.Errorf("getsockname: %w", err)
	}

	var info sockInfo
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		info.addr = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			ip = ip.WithZone(zoneName(sa.ZoneId))
		}
		info.addr = normalize(netip.AddrPortFrom(ip, uint16(sa.Port)))
	case *unix.SockaddrUnix:
		info.other = sa.Name
	}

	switch {
	case domain != unix.AF_INET && domain != unix.AF_INET6:
		info.kind = familyName(domain) + "/" + typeName(typ)
		info.reason = "not an IP socket"
	case typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
		info.kind = "udp"
	case typ == unix.SOCK_STREAM && (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_MPTCP):
		// MPTCP (SocketProtocol=mptcp, or Go's own default for listeners
		// since 1.24) is TCP on the wire for every client that does not
		// speak it.
		info.kind = "tcp"
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return sockInfo{}, fmt.Errorf("SO_ACCEPTCONN: %w", err)
		}
		if listening == 0 {
			info.reason = "tcp socket is not listening (Accept=yes units are not supported)"
			info.kind = "tcp (connected)"
		}
	default:
		info.kind = familyName(domain) + "/" + typeName(typ) + "/proto " + strconv.Itoa(proto)
		info.reason = "neither udp nor tcp"
	}
	if info.reason == "" && !info.addr.IsValid() {
		info.reason = "no bound address"
	}
	return info, nil
}

// normalize makes addresses comparable: IPv4-mapped IPv6 becomes IPv4.
func normalize(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func zoneName(index uint32) string {
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(index), 10)
}

func familyName(domain int) string {
	switch domain {
	case unix.AF_UNIX:
		return "unix"
	case unix.AF_INET:
		return "inet"
	case unix.AF_INET6:
		return "inet6"
	case unix.AF_NETLINK:
		return "netlink"
	case unix.AF_PACKET:
		return "packet"
	}
	return "family " + strconv.Itoa(domain)
}

func typeName(typ int) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_DGRAM:
		return "dgram"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_RAW:
		return "raw"
	}
	return "type " + strconv.Itoa(typ)
}
