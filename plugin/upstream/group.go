package upstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/coredns/coredns/plugin/pkg/proxy"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
)

const (
	// attemptsPerUpstream is how often one query may try each healthy
	// upstream of a group, as forward's defaultConnectAttemptsPerUpstream.
	// With "spread query", a second try to a service IP goes out on a new
	// flow and so, most likely, to another backend.
	attemptsPerUpstream = 2
)

// group is a set of upstreams used together with one policy: the route group
// or the failover group.
type group struct {
	name    string
	members []*member
	policy  policy
}

// member is one upstream of a group in one server block: the block's own
// pool of UDP sockets, its own CoreDNS proxy for TCP (force_tcp, and retries
// of truncated answers; its transport carries the block's spread settings)
// and the health state it shares with other blocks.
type member struct {
	pool  *udpPool
	p     *proxy.Proxy
	h     *health
	group string
	addr  string
}

// exchange sends the query to the group's upstreams in policy order, skipping
// those that are down, at most attempts times each, each try waiting at most
// try for its answer, and returns the first answer. It gives up when ctx is
// done (the query's overall deadline). It returns ErrNoHealthy without
// sending anything when every upstream is down, and the last I/O error when
// every attempt failed.
func (g *group) exchange(ctx context.Context, state request.Request, opts proxy.Options, attempts int, try time.Duration) (*dns.Msg, error) {
	list := g.policy.List(g.members)
	maxAttempts := attempts * len(list)

	var lastErr error
	next := 0
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if ctx.Err() != nil {
			break
		}
		m := g.nextHealthy(list, &next)
		if m == nil {
			break
		}
		ret, err := m.query(ctx, state, opts, try)
		if err == nil {
			return ret, nil
		}
		if isRequestError(err) {
			return nil, err
		}
		lastErr = err
		m.h.checkSoon()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("group %s: %w", g.name, err)
	}
	if lastErr == nil {
		return nil, fmt.Errorf("group %s: %w", g.name, ErrNoHealthy)
	}
	return nil, fmt.Errorf("group %s: %w", g.name, lastErr)
}

// nextHealthy returns the first upstream at or after *next (cyclically) that
// is not down, and moves *next past it; nil when all are down.
func (g *group) nextHealthy(list []*member, next *int) *member {
	for i := range list {
		m := list[(*next+i)%len(list)]
		if !m.h.down() {
			*next += i + 1
			return m
		}
	}
	return nil
}

// query sends one query to this upstream and waits at most try for the
// answer (less when ctx's deadline is sooner): over UDP through the pool,
// over TCP (force_tcp, or when a UDP answer is truncated) through the proxy,
// retrying as forward does when a cached connection was closed.
func (m *member) query(ctx context.Context, state request.Request, opts proxy.Options, try time.Duration) (*dns.Msg, error) {
	requests.WithLabelValues(m.group, m.addr).Inc()
	start := time.Now()
	if d, ok := ctx.Deadline(); ok {
		try = min(try, time.Until(d))
	}
	for {
		var ret *dns.Msg
		var err error
		if opts.ForceTCP || m.pool == nil {
			ret, _, _, err = m.p.Connect(ctx, state, opts)
		} else {
			ret, err = m.udp(ctx, state, try)
		}
		if errors.Is(err, proxy.ErrCachedClosed) {
			continue
		}
		if err == nil && ret.Truncated && !opts.ForceTCP && opts.PreferUDP {
			opts.ForceTCP = true
			continue
		}
		if err != nil {
			requestDuration.WithLabelValues(m.group, m.addr, "error").Observe(time.Since(start).Seconds())
			return nil, fmt.Errorf("upstream %s: %w", m.addr, err)
		}
		m.h.answered()
		requestDuration.WithLabelValues(m.group, m.addr, rcodeString(ret.Rcode)).Observe(time.Since(start).Seconds())
		return ret, nil
	}
}

// udp sends the query over the pool.
func (m *member) udp(ctx context.Context, state request.Request, try time.Duration) (*dns.Msg, error) {
	wire, err := state.Req.Pack()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", proxy.ErrInvalidRequest, err)
	}
	var q dns.Question
	if len(state.Req.Question) > 0 {
		q = state.Req.Question[0]
	}
	// A socket that reported an error (ICMP unreachable: the backend its
	// flow is pinned to is gone) is retired at once; the query goes again
	// on another socket, a few times, before the try counts as failed.
	for range udpErrorRetries {
		ret, err := m.pool.exchange(ctx, wire, q, try)
		if !errors.Is(err, errRetired) {
			return ret, err
		}
	}
	return m.pool.exchange(ctx, wire, q, try)
}

// udpErrorRetries is how often one try goes again on another socket after
// the socket it used reported an error.
const udpErrorRetries = 3

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return strconv.Itoa(rc)
}
