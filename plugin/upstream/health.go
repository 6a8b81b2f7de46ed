package upstream

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/proxy"
)

// healthKey identifies one health-checked upstream and its probe name.
// Server blocks of one CoreDNS instance that name the same upstream in the
// same group with the same probe share one health state: one probe stream
// per upstream instead of one per block.
type healthKey struct{ group, addr, domain string }

// healthSettings are the rest of how an upstream is checked. The first block
// that names an upstream sets them; a later block that differs gets a
// warning.
type healthSettings struct {
	tcp      bool
	interval time.Duration
	noRec    bool
	maxfails uint32
}

// health is the state of one upstream as seen by its health checks and by
// real queries. The proxy carries CoreDNS's health checker; it is never used
// for queries (each block has its own proxy for those).
type health struct {
	key healthKey
	healthSettings
	p   *proxy.Proxy
	set *healthSet

	// fails counts failed checks in a row. Unlike the proxy's own counter,
	// a real query that gets an answer resets it too: behind a service IP
	// with one dead pod of two, half the probes fail, and three failures in
	// a row must not mark the service down while queries get answers.
	fails atomic.Uint32

	// lastOK is the time (unix nanoseconds) of the last real query that got
	// an answer; a recent one makes a probe unnecessary.
	lastOK atomic.Int64
	// kick asks the health loop for a check now (after a failed query).
	kick chan struct{}
	// healthy is the state last published to the gauge.
	healthy atomic.Bool
}

// down reports whether the upstream failed more than maxfails checks in a
// row, with no answered query in between; never with maxfails 0.
func (h *health) down() bool {
	return h.maxfails > 0 && h.fails.Load() > h.maxfails
}

// answered records that a real query got an answer.
func (h *health) answered() {
	h.lastOK.Store(time.Now().UnixNano())
	if h.fails.Load() != 0 {
		h.fails.Store(0)
	}
}

// checkSoon asks the health loop for an immediate check.
func (h *health) checkSoon() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// loop checks the upstream every interval until ctx is done. A check is
// skipped when the upstream has no recorded failure and a real query got an
// answer within the interval.
func (h *health) loop(ctx context.Context) {
	h.check()
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.kick:
		}
		if h.fails.Load() == 0 && time.Since(time.Unix(0, h.lastOK.Load())) < h.interval {
			h.publish()
			continue
		}
		h.check()
	}
}

// check runs one health check (proxy's NS probe) and publishes the
// resulting state.
func (h *health) check() {
	if err := h.p.GetHealthchecker().Check(h.p); err != nil {
		h.fails.Add(1)
	} else {
		h.fails.Store(0)
	}
	h.publish()
}

// publish records the state, logs changes and updates the healthy gauge.
func (h *health) publish() {
	up := !h.down()
	if h.healthy.Swap(up) != up {
		if up {
			log.Infof("Upstream %s (%s) is healthy again", h.key.addr, h.key.group)
		} else {
			log.Warningf("Upstream %s (%s) is down after %d failed probes (%s NS)", h.key.addr, h.key.group, h.fails.Load(), h.key.domain)
		}
	}
	h.set.publish(h.key.group, h.key.addr)
}

// healthSet holds the health states of one CoreDNS instance. It lives in the
// caddy instance's storage, so a reload starts a fresh set and nothing is
// shared between instances.
type healthSet struct {
	mu      sync.Mutex
	entries map[healthKey]*health
	cancel  context.CancelFunc
	stopped bool
}

type healthSetKey struct{}

// healthSetOf returns the instance's health set, creating it (and hooking
// its start and stop to the instance) on first use.
func healthSetOf(c *caddy.Controller) *healthSet {
	if hs, ok := c.Get(healthSetKey{}).(*healthSet); ok {
		return hs
	}
	hs := &healthSet{entries: map[healthKey]*health{}}
	c.Set(healthSetKey{}, hs)
	c.OnStartup(func() error { hs.start(); return nil })
	c.OnShutdown(func() error { hs.stop(); return nil })
	return hs
}

// get returns the health state for k, creating it with settings hs on first
// use.
func (hs *healthSet) get(k healthKey, set healthSettings) *health {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if h, ok := hs.entries[k]; ok {
		if h.healthSettings != set {
			log.Warningf("Upstream %s (%s) is used with different health settings; checking it with those of its first block (%+v)", k.addr, k.group, h.healthSettings)
		}
		return h
	}
	h := &health{key: k, healthSettings: set, p: proxy.NewProxy(pluginName, k.addr, "dns"), set: hs, kick: make(chan struct{}, 1)}
	h.healthy.Store(true)
	hc := h.p.GetHealthchecker()
	hc.SetRecursionDesired(!set.noRec)
	hc.SetDomain(k.domain)
	if set.tcp {
		hc.SetTCPTransport()
	}
	hs.entries[k] = h
	return h
}

// start runs one health loop per upstream.
func (hs *healthSet) start() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	hs.cancel = cancel
	for _, h := range hs.entries {
		go h.loop(ctx)
	}
}

// stop ends the health loops and removes their gauges, so an upstream
// dropped by a reload does not linger; one that is kept is published again
// by the new instance's next check.
func (hs *healthSet) stop() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.cancel != nil {
		hs.cancel()
	}
	hs.stopped = true
	for k := range hs.entries {
		healthy.DeleteLabelValues(k.group, k.addr)
	}
}

// publish sets the healthy gauge of (group, addr). An upstream probed with
// two names (by blocks that want different probes) is healthy while either
// probe passes: the gauge says whether it answers at all.
func (hs *healthSet) publish(group, addr string) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.stopped {
		return
	}
	v := 0.0
	for k, h := range hs.entries {
		if k.group == group && k.addr == addr && h.healthy.Load() {
			v = 1
			break
		}
	}
	healthy.WithLabelValues(group, addr).Set(v)
}
