package netsetup

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// FallbackRoute sends the DNS queries addressed to one listener straight to
// upstream servers while localdns does not serve that listener.
type FallbackRoute struct {
	// Listener is the listener address pods and the host send queries to.
	Listener netip.Addr `json:"listener"`
	// Upstreams receive them instead, spread by a hash of the client's
	// address and port (one flow always goes to the same server).
	Upstreams []netip.AddrPort `json:"upstreams"`
}

// Defaults and marks of the fallback.
const (
	DefaultFallbackTable = "localdns-fallback"
	// FallbackComment is the comment on every fallback rule.
	FallbackComment = "localdns: fallback"
	// ProbeMark is the packet mark (SO_MARK) of localdns's own self-probes:
	// the fallback lets them through to the listener, so that a starting
	// localdns checks that it answers before it takes the listener over.
	// Only the low byte is used, which kube-proxy (0x4000, 0x8000), Calico
	// (0xffff0000) and Cilium (0x0f00 and the upper 16 bits) leave alone.
	ProbeMark = 0x35
)

// The fallback's chains. The address rewrite runs after conntrack (-200) has
// recorded the query as sent to the listener and before NAT (-100): a
// cluster DNS service address is then translated by kube-proxy's own DNAT as
// any packet to it would be, and conntrack translates the reply back to the
// listener address. (A DNAT of our own to the service address would not
// work: the kernel applies the first DNAT of a hook and skips the others, so
// kube-proxy's would never run.) Our DNAT runs after kube-proxy's and only
// acts for an upstream nobody else translates (VNet DNS servers); the
// masquerade covers host queries sent from a listener address that is still
// on the node.
var fallbackChains = []struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
}{
	{"rewrite-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle},
	// route: a changed destination is routed again.
	{"rewrite-output", nftables.ChainTypeRoute, nftables.ChainHookOutput, nftables.ChainPriorityMangle},
	{"dnat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityRef(10)},
	{"dnat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityRef(10)},
	{"masquerade", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityRef(110)},
	// Replies a local server still sends from a listener address (queries
	// it received before the swap) skip conntrack, as under the bypass: a
	// tracked one would leave an entry whose reply direction catches the
	// client's next query from the same port, which then escapes the NAT.
	{"notrack-replies", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityRaw},
}

// sinceChain is a regular chain whose one rule's comment records when the
// fallback was installed ("localdns: fallback since <RFC 3339>").
const sinceChain = "since"

const sincePrefix = FallbackComment + " since "

// fallbackRules returns the fallback table's rules, chain by chain:
//
//	rewrite-*:  meta mark ProbeMark return
//	rewrite-*:  ct state untracked return
//	rewrite-*:  ip daddr L {udp,tcp} dport P [jhash(saddr.sport) % n == i]
//	            counter ip daddr set U_i [th dport set U_i.port]
//	dnat-*:     ct original ip daddr L ip daddr U_i {udp,tcp} dport U_i.port
//	            counter dnat ip to U_i
//	masquerade: ct original ip daddr L ip saddr L counter masquerade
//	notrack-replies: ip saddr L {udp,tcp} sport P counter notrack
//
// An untracked packet is one the conntrack bypass let through a moment
// before a swap to the fallback (the raw hook ran before the transaction,
// this one after): it must reach the listener, as NAT would skip it. The
// probe's mark is let through in prerouting too: a host's packet to a
// local address comes back in through lo. seed is the hash's (0 would make
// the kernel draw one per rule, and the shares would no longer add up).
func fallbackRules(cfg Config, seed uint32) []ruleSpec {
	var rs []ruleSpec
	for _, ch := range []string{"rewrite-prerouting", "rewrite-output"} {
		rs = append(rs, ruleSpec{ch, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(ProbeMark)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}}, ruleSpec{ch, []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitUNTRACKED), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		}})
		for _, r := range cfg.Fallback {
			for _, p := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				for i, u := range r.Upstreams {
					rs = append(rs, ruleSpec{ch, rewriteExprs(r.Listener, p, cfg.Port, i, len(r.Upstreams), u, seed)})
				}
			}
		}
	}
	for _, r := range cfg.Fallback {
		for _, p := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rs = append(rs, ruleSpec{"notrack-replies", notrackExprs(r.Listener, p, cfg.Port, false)})
		}
	}
	for _, ch := range []string{"dnat-prerouting", "dnat-output"} {
		for _, r := range cfg.Fallback {
			for _, p := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				for _, u := range r.Upstreams {
					rs = append(rs, ruleSpec{ch, dnatExprs(r.Listener, p, u)})
				}
			}
		}
	}
	for _, r := range cfg.Fallback {
		es := append(ctOrigDst(r.Listener), matchAddr(r.Listener, false)...)
		rs = append(rs, ruleSpec{"masquerade", append(es, &expr.Counter{}, &expr.Masq{})})
	}
	return rs
}

// l4CsumOffset is where proto's checksum is in its header.
func l4CsumOffset(proto byte) uint32 {
	if proto == unix.IPPROTO_TCP {
		return 16
	}
	return 6
}

// rewriteExprs rewrites the destination of the i-th of n shares of the
// queries to listener:port to u. The expressions are those nft(8) generates
// for "ip daddr L udp dport P jhash ip saddr . udp sport mod n seed 0x0 == i
// counter ip daddr set U udp dport set U.port".
func rewriteExprs(listener netip.Addr, proto byte, port uint16, i, n int, u netip.AddrPort, seed uint32) []expr.Any {
	es := matchAddrPort(listener, proto, port, true)
	if n > 1 {
		es = append(es,
			// jhash over the source address and port, loaded into
			// consecutive 32-bit registers (reg 2 is NFT_REG32_04 onwards).
			&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(listener, false), Len: addrLen(listener)},
			&expr.Payload{DestRegister: 12 + addrLen(listener)/4, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: 2, DestRegister: 1, Length: addrLen(listener) + 4, Modulus: uint32(n), Seed: seed, Type: expr.HashTypeJenkins},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uint32(i))},
		)
	}
	es = append(es,
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: u.Addr().AsSlice()},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader,
			Offset: addrOffset(listener, true), Len: addrLen(listener),
			CsumType: expr.CsumTypeInet, CsumOffset: ipCsumOffset(listener), CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
	)
	if u.Port() != port {
		es = append(es,
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(u.Port())},
			&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader,
				Offset: 2, Len: 2, CsumType: expr.CsumTypeInet, CsumOffset: l4CsumOffset(proto)},
		)
	}
	return es
}

// ipCsumOffset is where the IPv4 header checksum is; IPv6 has none, and nft
// then asks for no L3 checksum update but still for the pseudo-header one.
func ipCsumOffset(a netip.Addr) uint32 {
	if a.Is6() {
		return 0
	}
	return 10
}

// ctOrigDst matches connections originally sent to a. (NFT_CT_DST loads
// the 16-byte tuple address, of which an IPv4 address is the first four;
// google/nftables sends the direction only with this key, not with
// NFT_CT_DST_IP, which nft(8) uses.)
func ctOrigDst(a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDST, Direction: 0},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// dnatExprs translates a rewritten query (originally to listener) to u with
// conntrack, unless someone else's DNAT (kube-proxy) already did.
func dnatExprs(listener netip.Addr, proto byte, u netip.AddrPort) []expr.Any {
	family := uint32(unix.NFPROTO_IPV4)
	if u.Addr().Is6() {
		family = unix.NFPROTO_IPV6
	}
	es := append(ctOrigDst(listener), matchAddrPort(u.Addr(), proto, u.Port(), true)...)
	return append(es,
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: u.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(u.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	)
}

func fallbackComment() []byte {
	return userdata.AppendString(nil, userdata.TypeComment, FallbackComment)
}

// checkFallbackRoutes validates cfg.Fallback: every listener is one of
// cfg.Addrs, every upstream is a unicast address of the listener's family
// that is not itself a listener.
func checkFallbackRoutes(cfg Config) error {
	if len(cfg.Fallback) == 0 {
		return errNoFallbackRoutes
	}
	for _, r := range cfg.Fallback {
		if !r.Listener.IsValid() {
			return errors.New("netsetup: fallback route without a listener")
		}
		found := false
		for _, a := range cfg.Addrs {
			found = found || a == r.Listener.Unmap()
		}
		if !found {
			return fmt.Errorf("netsetup: fallback route for %s, which is not a listener address", r.Listener)
		}
		if len(r.Upstreams) == 0 {
			return fmt.Errorf("netsetup: fallback route for %s has no upstream", r.Listener)
		}
		for _, u := range r.Upstreams {
			a := u.Addr().Unmap()
			switch {
			case !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || u.Port() == 0:
				return fmt.Errorf("netsetup: fallback upstream %s of %s is not a unicast address and port", u, r.Listener)
			case a.Is4() != r.Listener.Is4():
				return fmt.Errorf("netsetup: fallback upstream %s of %s is of another address family", u, r.Listener)
			}
			for _, l := range cfg.Addrs {
				if a == l {
					return fmt.Errorf("netsetup: fallback upstream %s of %s is a listener address (a loop)", u, r.Listener)
				}
			}
		}
	}
	return nil
}

var errNoFallbackRoutes = errors.New("netsetup: no fallback routes configured (no upstreams known)")

// InstallFallback puts the fallback in place and removes the conntrack
// bypass, in one atomic nftables transaction: at no moment does neither
// exist. Queries to the listeners then go straight to the upstreams of
// cfg.Fallback (the bypass would make them skip conntrack, which NAT
// needs). It replaces a fallback installed before, keeping its install time.
func InstallFallback(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	return installFallback(cfg, nil)
}

// installFallback is InstallFallback on a cfg with defaults; it also
// deletes the tables named in stale in the same transaction.
func installFallback(cfg Config, stale []string) error {
	if err := checkFallbackRoutes(cfg); err != nil {
		return err
	}
	since := time.Now().UTC()
	if fs, err := fallbackStatus(cfg); err == nil && fs.Present && !fs.Since.IsZero() {
		since = fs.Since
	}
	c, err := cfg.nftConn()
	if err != nil {
		return err
	}
	for _, name := range append(stale, cfg.Table) {
		removeTable(c, name)
	}
	t := ourTable(cfg.FallbackTable)
	removeTable(c, cfg.FallbackTable)
	c.AddTable(t)
	chains := make(map[string]*nftables.Chain, len(fallbackChains))
	for _, fc := range fallbackChains {
		chains[fc.name] = c.AddChain(&nftables.Chain{
			Name: fc.name, Table: t, Type: fc.typ, Hooknum: fc.hook, Priority: fc.priority,
			Policy: ptr(nftables.ChainPolicyAccept),
		})
	}
	comment := fallbackComment()
	var b [4]byte
	rand.Read(b[:])
	seed := binary.NativeEndian.Uint32(b[:]) | 1 // never 0
	for _, r := range fallbackRules(cfg, seed) {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.chain], Exprs: r.exprs, UserData: comment})
	}
	sc := c.AddChain(&nftables.Chain{Name: sinceChain, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: sc, Exprs: []expr.Any{&expr.Counter{}},
		UserData: userdata.AppendString(nil, userdata.TypeComment, sincePrefix+since.Format(time.RFC3339))})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netsetup: installing the fallback (nftables table inet %s): %w", cfg.FallbackTable, err)
	}
	return nil
}

// removeTable queues the deletion of table name (inet) whether or not it
// exists: adding an existing table is a no-op, so add+delete never fails
// the batch.
func removeTable(c *nftables.Conn, name string) {
	c.AddTable(ourTable(name))
	c.DelTable(ourTable(name))
}

// FallbackState is what the kernel holds of the fallback.
type FallbackState struct {
	Present bool
	// Since is when it was installed (zero if unknown).
	Since time.Time
	// Packets counts queries the fallback sent to upstreams, per listener.
	Packets map[netip.Addr]uint64
	// Upstreams lists each listener's fallback upstreams, from the rules.
	Upstreams map[netip.Addr][]netip.AddrPort
}

// Fallback reports whether the fallback is installed, since when, and how
// many queries it carried; it reads the kernel's rules, so it works while
// localdns is not running.
func Fallback(cfg Config) (FallbackState, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FallbackState{}, err
	}
	return fallbackStatus(cfg)
}

func fallbackStatus(cfg Config) (FallbackState, error) {
	fs := FallbackState{Packets: map[netip.Addr]uint64{}, Upstreams: map[netip.Addr][]netip.AddrPort{}}
	c, err := cfg.nftConn()
	if err != nil {
		return fs, err
	}
	tables, err := inetTables(c)
	if err != nil {
		return fs, err
	}
	fs.Present = tables[cfg.FallbackTable]
	if !fs.Present {
		return fs, nil
	}
	t := ourTable(cfg.FallbackTable)
	for _, name := range []string{sinceChain, "rewrite-prerouting", "rewrite-output"} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if err != nil {
			return fs, fmt.Errorf("netsetup: listing rules of %s/%s: %w", cfg.FallbackTable, name, err)
		}
		for _, r := range rules {
			if name == sinceChain {
				if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && strings.HasPrefix(s, sincePrefix) {
					fs.Since, _ = time.Parse(time.RFC3339, strings.TrimPrefix(s, sincePrefix))
				}
				continue
			}
			if !bytes.Equal(r.UserData, fallbackComment()) {
				continue
			}
			listener, upstream, packets, ok := parseRewrite(r.Exprs)
			if !ok {
				continue
			}
			fs.Packets[listener] += packets
			if name == "rewrite-prerouting" && !containsAddrPort(fs.Upstreams[listener], upstream) {
				fs.Upstreams[listener] = append(fs.Upstreams[listener], upstream)
			}
		}
	}
	return fs, nil
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, b := range s {
		if a == b {
			return true
		}
	}
	return false
}

// parseRewrite reads a rewrite rule back: the listener it matches, the
// upstream it sends to and its packet count.
func parseRewrite(es []expr.Any) (listener netip.Addr, upstream netip.AddrPort, packets uint64, ok bool) {
	if len(es) < 4 {
		return
	}
	cmp, isCmp := es[3].(*expr.Cmp)
	if !isCmp {
		return
	}
	listener, ok = netip.AddrFromSlice(cmp.Data)
	if !ok {
		return
	}
	port := uint16(0)
	if c, isCmp := es[7].(*expr.Cmp); isCmp && len(c.Data) == 2 {
		port = binaryutil.BigEndian.Uint16(c.Data)
	}
	var addr netip.Addr
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Counter:
			packets = e.Packets
		case *expr.Immediate:
			switch len(e.Data) {
			case 2:
				port = binaryutil.BigEndian.Uint16(e.Data)
			case 4, 16:
				addr, _ = netip.AddrFromSlice(e.Data)
			}
		}
	}
	if !addr.IsValid() {
		return listener, upstream, packets, false
	}
	return listener, netip.AddrPortFrom(addr, port), packets, true
}

// MarkControl returns a net.Dialer Control function that sets the socket's
// mark (SO_MARK, which needs CAP_NET_ADMIN). Where that is refused the
// socket is used unmarked: without the capability localdns installs no
// fallback either.
func MarkControl(mark int) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
		})
	}
}
