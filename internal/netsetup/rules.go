package netsetup

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Our base chains: prerouting sees queries from pods, output sees queries from
// the host and all our replies. Both run at raw priority (-300), before
// conntrack (-200), which is where notrack has to happen.
var chainSpecs = []struct {
	name string
	hook *nftables.ChainHook
}{
	{"prerouting", nftables.ChainHookPrerouting},
	{"output", nftables.ChainHookOutput},
}

// ruleSpec is one rule we want: its chain and its expressions.
type ruleSpec struct {
	chain string
	exprs []expr.Any
}

// wantRules returns the rules of our table, in order, chain by chain:
//
//	prerouting: {ip,ip6} daddr A {udp,tcp} dport P counter notrack  (per address)
//	output:     {ip,ip6} daddr A {udp,tcp} dport P counter notrack  (per address)
//	output:     {ip,ip6} saddr A {udp,tcp} sport P counter notrack  (ReplyNotrack)
func wantRules(cfg Config) []ruleSpec {
	var rs []ruleSpec
	for _, ch := range []string{"prerouting", "output"} {
		for _, a := range cfg.Addrs {
			for _, p := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				rs = append(rs, ruleSpec{ch, notrackExprs(a, p, cfg.Port, true)})
			}
		}
	}
	if cfg.ReplyNotrack {
		for _, a := range cfg.Addrs {
			for _, p := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				rs = append(rs, ruleSpec{"output", notrackExprs(a, p, cfg.Port, false)})
			}
		}
	}
	return rs
}

// notrackExprs matches protocol proto to (dst) or from (!dst) addr:port and
// skips conntrack. The expressions are the ones nft(8) itself generates for
// "ip daddr A udp dport P counter notrack" in an inet table, so that
// `nft list table` prints them that way.
func notrackExprs(a netip.Addr, proto byte, port uint16, dst bool) []expr.Any {
	return append(matchAddrPort(a, proto, port, dst), &expr.Counter{}, &expr.Notrack{})
}

// matchAddr matches packets of a's family to (dst) or from (!dst) a:
// "ip daddr A" / "ip6 saddr A".
func matchAddr(a netip.Addr, dst bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto(a)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset(a, dst), Len: addrLen(a)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// matchAddrPort matches packets of protocol proto to (dst) or from (!dst)
// a:port: "ip daddr A udp dport P".
func matchAddrPort(a netip.Addr, proto byte, port uint16, dst bool) []expr.Any {
	portOff := uint32(0) // sport
	if dst {
		portOff = 2
	}
	return append(matchAddr(a, dst),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOff, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

func nfproto(a netip.Addr) byte {
	if a.Is6() {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func addrLen(a netip.Addr) uint32 { return uint32(a.BitLen() / 8) }

// addrOffset is the offset of the destination (dst) or source address in
// a's IP header.
func addrOffset(a netip.Addr, dst bool) uint32 {
	switch {
	case a.Is6() && dst:
		return 24
	case a.Is6():
		return 8
	case dst:
		return 16
	default:
		return 12
	}
}

// inetTables returns the names of the tables of the inet family.
func inetTables(c *nftables.Conn) (map[string]bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("netsetup: listing nftables tables: %w", err)
	}
	names := make(map[string]bool, len(tables))
	for _, t := range tables {
		names[t.Name] = true
	}
	return names, nil
}

func ourTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

func ruleComment() []byte {
	return userdata.AppendString(nil, userdata.TypeComment, RuleComment)
}

// EnsureRules installs the conntrack bypass: our table, replaced as a whole in
// one atomic nftables transaction, so that a re-run never duplicates a rule and
// a failure leaves the previous table in place. A table recorded in the state
// file under another name (the configuration changed) is removed in the same
// transaction.
//
// Call it only after every listener answered a self-probe: notrack in front of
// a server that does not answer turns a DNS outage into a black hole.
func EnsureRules(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	step, err := ensureRules(cfg)
	if err != nil {
		cfg.Metrics.SetupError(step)
	}
	return err
}

func ensureRules(cfg Config) (string, error) {
	st, err := loadState(cfg)
	if err != nil {
		return StepState, err
	}
	if st == nil {
		st = &state{}
	}
	var stale []string
	if st.Table != "" && st.Table != cfg.Table {
		stale = append(stale, st.Table)
	}
	if err := installTable(cfg, stale); err != nil {
		return StepRules, err
	}
	if st.Table != cfg.Table {
		st.Table = cfg.Table
		if err := saveState(cfg, st); err != nil {
			return StepState, err
		}
	}
	return "", nil
}

// installTable replaces our table in one transaction and deletes the tables
// named in stale in the same one.
func installTable(cfg Config, stale []string) error {
	c, err := cfg.nftConn()
	if err != nil {
		return err
	}
	// The fallback goes in the same transaction: at no moment is there
	// neither the bypass (localdns serves) nor the fallback.
	for _, name := range append(stale, cfg.FallbackTable, cfg.Table) {
		removeTable(c, name)
	}
	t := ourTable(cfg.Table)
	c.AddTable(t)
	chains := make(map[string]*nftables.Chain, len(chainSpecs))
	for _, cs := range chainSpecs {
		chains[cs.name] = c.AddChain(&nftables.Chain{
			Name:     cs.name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  cs.hook,
			Priority: nftables.ChainPriorityRaw,
			Policy:   ptr(nftables.ChainPolicyAccept),
		})
	}
	comment := ruleComment()
	for _, r := range wantRules(cfg) {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.chain], Exprs: r.exprs, UserData: comment})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netsetup: installing nftables table inet %s: %w", cfg.Table, err)
	}
	return nil
}

// deleteTables removes the named tables (inet family) in one transaction;
// tables that do not exist are fine.
func deleteTables(cfg Config, names []string) error {
	c, err := cfg.nftConn()
	if err != nil {
		return err
	}
	for _, name := range names {
		removeTable(c, name)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netsetup: deleting nftables tables %v: %w", names, err)
	}
	return nil
}

// rulesCheck is what checkRules found.
type rulesCheck struct {
	table  bool   // our table exists
	rules  int    // rules carrying our comment
	hits   uint64 // packets counted by those rules
	intact bool   // table, chains and rules exactly as wantRules says
	why    string // what differs, when !intact
}

// checkRules compares our table in the kernel with what we want.
func checkRules(cfg Config) (rulesCheck, error) {
	var rc rulesCheck
	c, err := cfg.nftConn()
	if err != nil {
		return rc, err
	}
	tables, err := inetTables(c)
	if err != nil {
		return rc, err
	}
	rc.table = tables[cfg.Table]
	fallback := tables[cfg.FallbackTable]
	if !rc.table {
		rc.why = "table inet " + cfg.Table + " missing"
		return rc, nil
	}
	if fallback {
		rc.why = "fallback table inet " + cfg.FallbackTable + " present while localdns serves"
		// still count our rules below, for status
	}
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return rc, fmt.Errorf("netsetup: listing nftables chains: %w", err)
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range all {
		if ch.Table.Name == cfg.Table {
			chains[ch.Name] = ch
		}
	}
	t := ourTable(cfg.Table)
	got := map[string][]*nftables.Rule{}
	for name, ch := range chains {
		ch.Table = t
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return rc, fmt.Errorf("netsetup: listing rules of chain %s: %w", name, err)
		}
		for _, r := range rules {
			if !bytes.Equal(r.UserData, ruleComment()) {
				continue
			}
			rc.rules++
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Counter); ok {
					rc.hits += c.Packets
				}
			}
		}
		got[name] = rules
	}

	if rc.why != "" {
		return rc, nil
	}
	if len(chains) != len(chainSpecs) {
		rc.why = fmt.Sprintf("%d chains, want %d", len(chains), len(chainSpecs))
		return rc, nil
	}
	for _, cs := range chainSpecs {
		ch := chains[cs.name]
		switch {
		case ch == nil:
			rc.why = "chain " + cs.name + " missing"
		case ch.Hooknum == nil || *ch.Hooknum != *cs.hook,
			ch.Priority == nil || *ch.Priority != *nftables.ChainPriorityRaw,
			ch.Type != nftables.ChainTypeFilter,
			ch.Policy == nil || *ch.Policy != nftables.ChainPolicyAccept:
			rc.why = "chain " + cs.name + " has another hook, priority, type or policy"
		}
		if rc.why != "" {
			return rc, nil
		}
	}
	want := map[string][]ruleSpec{}
	for _, r := range wantRules(cfg) {
		want[r.chain] = append(want[r.chain], r)
	}
	for _, cs := range chainSpecs {
		g, w := got[cs.name], want[cs.name]
		if len(g) != len(w) {
			rc.why = fmt.Sprintf("chain %s has %d rules, want %d", cs.name, len(g), len(w))
			return rc, nil
		}
		for i := range w {
			if !bytes.Equal(g[i].UserData, ruleComment()) || !sameExprs(g[i].Exprs, w[i].exprs) {
				rc.why = fmt.Sprintf("chain %s rule %d differs", cs.name, i+1)
				return rc, nil
			}
		}
	}
	rc.intact = true
	return rc, nil
}

// sameExprs compares rule expressions, ignoring counter values.
func sameExprs(got, want []expr.Any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if _, ok := got[i].(*expr.Counter); ok {
			if _, ok := want[i].(*expr.Counter); ok {
				continue
			}
		}
		if !reflect.DeepEqual(got[i], want[i]) {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }
