// Package upstream implements the upstream plugin: localdns's forwarder to the
// cluster CoreDNS service and, when that is down, to the VNet DNS servers.
//
// It is built on CoreDNS's forward machinery and only adds what forward lacks.
//
// Reused from CoreDNS (plugin/pkg/proxy): the per-upstream Proxy with its
// transport (dial, UDP/TCP exchange, ID check, truncation handling, IP_RECVERR
// so ICMP errors fail a query at once) and its health checker (". IN NS",
// fails counter, Down(maxfails)). The per-query retry loop follows forward's
// (ErrCachedClosed retry, TCP retry of truncated UDP answers, FORMERR on a
// mismatched reply, REFUSED above max_concurrent).
//
// Written here, because forward does not have it:
//
//   - Two upstream groups. A route group gets every query; a failover group
//     gets the queries the route group cannot answer (all its upstreams down
//     by health check, or every attempt failed with an I/O error), but only
//     for names outside the never_failover zones. The cluster domain and the
//     reverse zones must never go to VNet DNS: it would answer NXDOMAIN, and a
//     cache above us would keep that. Forward can chain two instances with
//     "next", but only on an answered rcode, not on a dead upstream.
//   - Fast failure. With no healthy upstream for a name the plugin answers
//     SERVFAIL at once, without sending. Forward, unless told to fail fast,
//     picks a random dead upstream and waits out its timeouts.
//   - Continuous, shared health checks. Forward only probes an upstream after
//     a query to it failed, so an idle upstream's state is unknown and a
//     healthy gauge would be stale; and every forward block probes on its
//     own. Here every upstream is checked every health_check interval, once
//     per CoreDNS instance however many blocks use it, and the probe is
//     skipped when a real query to it got an answer within the interval (a
//     busy upstream costs no extra probes).
//   - Spread with bounded conntrack. A kube-proxy service IP is a DNAT
//     chosen per conntrack flow; a reused UDP socket is one flow and pins
//     queries to one CoreDNS pod, a socket per query is a conntrack entry
//     per miss. UDP queries go over a pool of connected sockets per
//     upstream (pool.go), each retired after its lifetime ("spread") or on
//     a timeout or ICMP error, with random IDs and replies matched by ID
//     and question. TCP uses the proxy transport with a connection max age.
//   - An overall deadline per query ("timeout", default 2 s): SERVFAIL
//     after it, before clients retry.
//
// Metrics are package-level collectors on the default Prometheus registry,
// which CoreDNS's prometheus plugin serves; this is the CoreDNS convention and
// the only package-level state besides plugin registration. Shared health
// state lives in the caddy instance's storage, so a reload starts afresh.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/debug"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/coredns/coredns/plugin/pkg/proxy"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

const pluginName = "upstream"

var log = clog.NewWithPlugin(pluginName)

var (
	// ErrNoHealthy is returned when a group has no healthy upstream left, so
	// nothing was sent.
	ErrNoHealthy = errors.New("no healthy upstream")
	// ErrLimitExceeded is returned when a query is refused because
	// max_concurrent queries are already in flight.
	ErrLimitExceeded = errors.New("max_concurrent queries exceeded")
)

// Upstream is the plugin handler of one server block.
type Upstream struct {
	concurrent    atomic.Int64
	maxConcurrent int64

	route    *group
	failover *group // nil: no failover group

	// neverFailover holds the zones whose names must never go to the
	// failover group.
	neverFailover []string

	opts proxy.Options
	// timeout is the overall deadline of a query: after it, SERVFAIL.
	timeout time.Duration
	// try is the longest one try (one upstream, once) waits for its answer.
	try time.Duration
	// tryUnhealthy sends a query to the upstreams even when every one it
	// may use is down (try_unhealthy), instead of failing fast.
	tryUnhealthy bool

	Next plugin.Handler
}

// Name implements plugin.Handler.
func (u *Upstream) Name() string { return pluginName }

// ServeDNS implements plugin.Handler. It answers every query it gets; it never
// calls the next plugin.
func (u *Upstream) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}

	if u.maxConcurrent > 0 {
		n := u.concurrent.Add(1)
		defer u.concurrent.Add(-1)
		if n > u.maxConcurrent {
			maxConcurrentRejects.Inc()
			return dns.RcodeRefused, ErrLimitExceeded
		}
	}

	// Every query gets an answer within timeout: the client (glibc, musl:
	// 5 s) must not have to retry, and a cache above can serve stale.
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()

	// A name that may fail over tries each route upstream once: after a
	// timeout the failover group answers sooner than a second try would.
	mayFailover := u.mayFailover(state.Name())
	attempts := attemptsPerUpstream
	if mayFailover {
		attempts = 1
	}
	ret, err := u.route.exchange(ctx, state, u.opts, attempts, u.try)
	last := u.route
	if err != nil && mayFailover && ctx.Err() == nil && !isRequestError(err) {
		failovers.WithLabelValues(u.route.name, u.failover.name).Inc()
		ret, err = u.failover.exchange(ctx, state, u.opts, attemptsPerUpstream, u.try)
		last = u.failover
	}
	if errors.Is(err, ErrNoHealthy) {
		if u.tryUnhealthy {
			ret, err = u.tryAnyway(ctx, state, mayFailover)
		} else {
			fastFailures.WithLabelValues(last.name).Inc()
		}
	}

	if err != nil {
		switch {
		case errors.Is(err, proxy.ErrInvalidRequest):
			return dns.RcodeFormatError, err
		case errors.Is(err, proxy.ErrUnsupportedRequest):
			return dns.RcodeNotImplemented, err
		}
		// Never NXDOMAIN: SERVFAIL lets a cache above serve a stale answer.
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}

	if !state.Match(ret) {
		debug.Hexdumpf(ret, "Wrong reply for id: %d, %s %d", ret.Id, state.QName(), state.QType())
		formerr := new(dns.Msg)
		formerr.SetRcode(r, dns.RcodeFormatError)
		w.WriteMsg(formerr)
		return 0, nil
	}

	w.WriteMsg(ret)
	return 0, nil
}

// tryAnyway sends the query to every upstream it may use, marked down or
// not, once each in policy order (the route group's, then the failover
// group's), until one answers or the deadline passes: what forward does
// when all its upstreams are down and failfast_all_unhealthy_upstreams is
// off, for health checks that are wrong (a probe name the upstream does not
// answer) rather than upstreams that are.
func (u *Upstream) tryAnyway(ctx context.Context, state request.Request, mayFailover bool) (*dns.Msg, error) {
	groups := []*group{u.route}
	if mayFailover {
		groups = append(groups, u.failover)
	}
	err := ErrNoHealthy
	for _, g := range groups {
		for _, m := range g.policy.List(g.members) {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("group %s: %w", g.name, ctx.Err())
			}
			ret, qerr := m.query(ctx, state, u.opts, u.try)
			if qerr == nil {
				return ret, nil
			}
			if isRequestError(qerr) {
				return nil, qerr
			}
			err = fmt.Errorf("group %s: %w", g.name, qerr)
		}
	}
	return nil, err
}

// mayFailover reports whether qname may be sent to the failover group.
func (u *Upstream) mayFailover(qname string) bool {
	if u.failover == nil {
		return false
	}
	for _, z := range u.neverFailover {
		if plugin.Name(z).Matches(qname) {
			return false
		}
	}
	return true
}

// isRequestError reports whether err is about the request itself: another
// upstream would fail it the same way.
func isRequestError(err error) bool {
	return errors.Is(err, proxy.ErrInvalidRequest) || errors.Is(err, proxy.ErrUnsupportedRequest)
}
