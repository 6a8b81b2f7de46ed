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
)

const (
	// exchangeTimeout bounds the time one group spends on one query, as
	// forward's defaultTimeout does.
	exchangeTimeout = 5 * time.Second
	// attemptsPerUpstream is how often one query may try each healthy
	// upstream of a group, as forward's defaultConnectAttemptsPerUpstream.
	// With spread on, a second try to a service IP goes out on a new flow
	// and so, most likely, to another backend.
	attemptsPerUpstream = 2
)

// group is a set of upstreams used together with one policy: the route group
// or the failover group.
type group struct {
	name     string
	members  []*member
	policy   policy
	maxfails uint32
}

// member is one upstream of a group: a CoreDNS proxy plus our health state.
type member struct {
	p     *proxy.Proxy
	group string
	addr  string

	// lastOK is the time (unix nanoseconds) of the last real query that got
	// an answer; a recent one makes a health probe unnecessary.
	lastOK atomic.Int64
	// kick asks the health loop for a check now (after a failed query).
	kick chan struct{}
	// healthy is the state last published to the gauge.
	healthy atomic.Bool
}

func newMember(groupName, addr string) *member {
	m := &member{
		p:     proxy.NewProxy(pluginName, addr, "dns"),
		group: groupName,
		addr:  addr,
		kick:  make(chan struct{}, 1),
	}
	m.healthy.Store(true)
	return m
}

// exchange sends the query to the group's upstreams in policy order, skipping
// those that are down, and returns the first answer. It returns ErrNoHealthy
// without sending anything when every upstream is down, and the last I/O
// error when every attempt failed.
func (g *group) exchange(ctx context.Context, state request.Request, opts proxy.Options) (*dns.Msg, error) {
	list := g.policy.List(g.members)
	deadline := time.Now().Add(exchangeTimeout)
	maxAttempts := attemptsPerUpstream * len(list)

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
		m.checkSoon()
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
		if !m.p.Down(g.maxfails) {
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
		m.lastOK.Store(time.Now().UnixNano())
		requestDuration.WithLabelValues(m.group, m.addr, rcodeString(ret.Rcode)).Observe(time.Since(start).Seconds())
		return ret, nil
	}
}

// checkSoon asks the health loop for an immediate check.
func (m *member) checkSoon() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// healthLoop checks the upstream every interval until ctx is done. A check is
// skipped when the upstream has no recorded failure and a real query got an
// answer within the interval.
func (m *member) healthLoop(ctx context.Context, interval time.Duration, maxfails uint32) {
	m.check(maxfails)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.kick:
		}
		if m.p.Fails() == 0 && time.Since(time.Unix(0, m.lastOK.Load())) < interval {
			m.publish(maxfails)
			continue
		}
		m.check(maxfails)
	}
}

// check runs one health check (proxy's ". IN NS" probe) and publishes the
// resulting state.
func (m *member) check(maxfails uint32) {
	if hc := m.p.GetHealthchecker(); hc != nil {
		hc.Check(m.p) // the error is recorded in the proxy's fails counter
	}
	m.publish(maxfails)
}

// publish sets the healthy gauge and logs state changes.
func (m *member) publish(maxfails uint32) {
	up := !m.p.Down(maxfails)
	v := 0.0
	if up {
		v = 1
	}
	healthy.WithLabelValues(m.group, m.addr).Set(v)
	if m.healthy.Swap(up) != up {
		if up {
			log.Infof("Upstream %s (%s) is healthy again", m.addr, m.group)
		} else {
			log.Warningf("Upstream %s (%s) is down after %d failed health checks", m.addr, m.group, m.p.Fails())
		}
	}
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return strconv.Itoa(rc)
}
