package upstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin/pkg/proxy"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
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

	mx memberMetrics
}

// memberMetrics holds a member's metric children once used: looking one up
// by its label values hashes them and searches the vector's map, on every
// query. Each child is created on first use, as WithLabelValues would, so
// no series appears before it counts something.
type memberMetrics struct {
	requests atomic.Pointer[prometheus.Counter]
	// duration by rcode (0-15: the header's rcodes), and rcodeError for
	// I/O errors and timeouts.
	duration [rcodeError + 1]atomic.Pointer[prometheus.Observer]
}

// rcodeError is the slot of memberMetrics.duration for rcode="error".
const rcodeError = 16

func (m *member) requests() prometheus.Counter {
	if c := m.mx.requests.Load(); c != nil {
		return *c
	}
	c := requests.WithLabelValues(m.group, m.addr)
	m.mx.requests.Store(&c)
	return c
}

// duration is the request_duration_seconds child for an answer's rcode; an
// extended rcode (above 15, from the OPT record) is looked up each time.
func (m *member) duration(rcode int) prometheus.Observer {
	if rcode < 0 || rcode > 15 {
		return requestDuration.WithLabelValues(m.group, m.addr, rcodeString(rcode))
	}
	return m.durationChild(rcode)
}

// durationError is the request_duration_seconds child for I/O errors and
// timeouts.
func (m *member) durationError() prometheus.Observer { return m.durationChild(rcodeError) }

func (m *member) durationChild(slot int) prometheus.Observer {
	if o := m.mx.duration[slot].Load(); o != nil {
		return *o
	}
	label := "error"
	if slot != rcodeError {
		label = rcodeString(slot)
	}
	o := requestDuration.WithLabelValues(m.group, m.addr, label)
	m.mx.duration[slot].Store(&o)
	return o
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
	m.requests().Inc()
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
			m.durationError().Observe(time.Since(start).Seconds())
			return nil, fmt.Errorf("upstream %s: %w", m.addr, err)
		}
		m.h.answered()
		m.duration(ret.Rcode).Observe(time.Since(start).Seconds())
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
