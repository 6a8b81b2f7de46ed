package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/netsetup"
)

// ProbeName is the name every probe asks for (config.ProbeZone). The
// health-check zone is served on every listener by CoreDNS's whoami plugin,
// locally, so the probe never depends on an upstream.
const ProbeName = config.ProbeZone

// Probe sends one real DNS query, "health-check.localdns.local. IN A", to addr
// over network ("udp" or "tcp") and returns nil only if a NOERROR reply came
// back carrying an address record for that name.
//
// whoami puts its A/AAAA record (the client's address) in the additional
// section, not the answer section, so both sections are searched; any other
// local answer for the name (a template, a hosts entry) is accepted as well.
// ctx bounds the whole exchange (dial, write, read).
func Probe(ctx context.Context, addr netip.AddrPort, network string) error {
	if network != "udp" && network != "tcp" {
		return fmt.Errorf("probe %s: unsupported network %q (want udp or tcp)", addr, network)
	}
	m := new(dns.Msg)
	m.SetQuestion(ProbeName, dns.TypeA)
	// The mark lets the probe through the fallback (which would send it to
	// an upstream) to the listener itself.
	c := &dns.Client{Net: network, Dialer: &net.Dialer{Control: netsetup.MarkControl(netsetup.ProbeMark)}}
	r, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return fmt.Errorf("probe %s/%s: %w", addr, network, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("probe %s/%s: rcode %s", addr, network, dns.RcodeToString[r.Rcode])
	}
	for _, section := range [][]dns.RR{r.Answer, r.Extra} {
		for _, rr := range section {
			h := rr.Header()
			if (h.Rrtype == dns.TypeA || h.Rrtype == dns.TypeAAAA) && strings.EqualFold(h.Name, ProbeName) {
				return nil
			}
		}
	}
	return fmt.Errorf("probe %s/%s: NOERROR without an address record for %s", addr, network, ProbeName)
}

// ListenerProbe returns a probe for RunWatchdog that checks every listener in
// addrs over both UDP and TCP, concurrently, and fails if any of them fails
// (errors joined). Both transports are probed because they are separate
// sockets and separate server loops: either one can die alone.
func ListenerProbe(addrs ...netip.AddrPort) func(context.Context) error {
	return func(ctx context.Context) error {
		if len(addrs) == 0 {
			return errors.New("probe: no listeners to probe")
		}
		errs := make([]error, 2*len(addrs))
		var wg sync.WaitGroup
		for i, a := range addrs {
			for j, network := range [2]string{"udp", "tcp"} {
				wg.Go(func() { errs[2*i+j] = Probe(ctx, a, network) })
			}
		}
		wg.Wait()
		return errors.Join(errs...)
	}
}
