package clientbudget

import (
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
)

const pluginName = "clientbudget"

func init() { plugin.Register(pluginName, setup) }

// shared is the process-wide tracker: a client's budget spans every block
// and listener it sends to, and the last minute's counts survive a reload
// (caddy runs setup again for the new instance). Registration-scope state,
// as nodecache's store.
var shared struct {
	once    sync.Once
	tracker *Tracker
}

// Shared returns the process-wide tracker; the same one for the life of the
// process.
func Shared() *Tracker {
	shared.once.Do(func() { shared.tracker = NewTracker() })
	return shared.tracker
}

// budget is one block's settings.
type budget struct {
	rate  float64
	burst int
}

// instanceKey holds, per caddy instance, the budget the first block set:
// the budget is process-wide, so every block must agree.
type instanceKey struct{}

func setup(c *caddy.Controller) error {
	bg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	if first, ok := c.Get(instanceKey{}).(budget); ok {
		if first != bg {
			return plugin.Error(pluginName, fmt.Errorf("the budget is process-wide: this block says %v %d, another %v %d", bg.rate, bg.burst, first.rate, first.burst))
		}
	} else {
		c.Set(instanceKey{}, bg)
	}
	t := Shared()
	c.OnStartup(func() error {
		t.SetBudget(bg.rate, bg.burst)
		return nil
	})
	cfg := dnsserver.GetConfig(c)
	h := &ClientBudget{tracker: t}
	if len(cfg.ListenHosts) > 0 && cfg.ListenHosts[0] != "" {
		// As CoreDNS's metrics.WithServer names a server: "dns://host:port".
		h.server = "dns://" + net.JoinHostPort(cfg.ListenHosts[0], cfg.Port)
	}
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		h.Next = next
		return h
	})
	return nil
}

// parse reads `clientbudget [RATE [BURST]]`. RATE is upstream queries a
// second per client, 0 for no limit (accounting only); BURST defaults to
// burstFactor times RATE.
func parse(c *caddy.Controller) (budget, error) {
	bg := budget{rate: DefaultRate, burst: DefaultBurst}
	blocks := 0
	for c.Next() {
		if blocks++; blocks > 1 {
			return bg, plugin.ErrOnce
		}
		args := c.RemainingArgs()
		if len(args) > 2 {
			return bg, c.ArgErr()
		}
		if len(args) >= 1 {
			r, err := strconv.ParseFloat(args[0], 64)
			if err != nil || r < 0 || r != r || r > 1e9 {
				return bg, c.Errf("rate %q is not a number of queries a second from 0 to 1e9", args[0])
			}
			bg.rate, bg.burst = r, int(burstFactor*r)
		}
		if len(args) == 2 {
			b, err := strconv.Atoi(args[1])
			if err != nil || b < 1 || b > 1e9 {
				return bg, c.Errf("burst %q is not a query count from 1 to 1e9", args[1])
			}
			bg.burst = b
		}
		if c.NextBlock() {
			return bg, c.Errf("unknown property %q", c.Val())
		}
		if bg.rate > 0 && bg.burst < 1 {
			bg.burst = 1
		}
	}
	return bg, nil
}

// The defaults: far above what a busy pod sends upstream (see README.md),
// far below what one cluster CoreDNS pod serves.
const (
	DefaultRate  = 2000
	DefaultBurst = burstFactor * DefaultRate
	burstFactor  = 5
)
