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
	// exchangeTimeout bounds the time one group spends on one query, as
	// forward's defaultTimeout does.
	exchangeTimeout = 5 * time.Second
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
// CoreDNS proxy (its transport carries the block's protocol and spread
// settings) and the health state it shares with other blocks.
type member struct {
	p     *proxy.Proxy
	h     *health
	group string
	addr  string
}

// exchange sends the query to the group's upstreams in policy order, skipping
// those that are down, at most attempts times each, and returns the first
// answer. It returns ErrNoHealthy without sending anything when every
// upstream is down, and the last I/O error when every attempt failed.
func (g *group) exchange(ctx context.Context, state request.Request, opts proxy.Options, attempts int) (*dns.Msg, error) {
	list := g.policy.List(g.members)
	deadline := time.Now().Add(exchangeTimeout)
	maxAttempts := attempts * len(list)

	var lastErr error
	next := 0
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		m := g.nextHealthy(list, &next)
		if m == nil {
			break
		}
		ret, err := m.query(ctx, state, opts)
		if err == nil {
			return ret, nil
		}
		if isRequestError(err) {
			return nil, err
		}
		lastErr = err
		m.h.checkSoon()
	}
	if lastErr == nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
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

// query sends one query to this upstream, retrying as forward does when a
// cached connection was closed, and over TCP when a UDP answer is truncated.
func (m *member) query(ctx context.Context, state request.Request, opts proxy.Options) (*dns.Msg, error) {
	requests.WithLabelValues(m.group, m.addr).Inc()
	start := time.Now()
	for {
		ret, _, _, err := m.p.Connect(ctx, state, opts)
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

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return strconv.Itoa(rc)
}
