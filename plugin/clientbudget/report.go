package clientbudget

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/localdns/localdns/internal/topk"
)

// Top is the busiest clients and names over the last minute, as /status
// serves it and `localdns top` prints it. Counts come from heavy-hitter
// sketches: each is at most its *Err field above the truth, which only
// matters for clients and names far from the top.
type Top struct {
	WindowSeconds    int          `json:"windowSeconds"`
	QueriesPerSecond float64      `json:"queriesPerSecond"` // each client's budget; 0: no limit
	Burst            int          `json:"burst"`
	TrackedClients   int          `json:"trackedClients"` // clients with a token bucket
	Queries          uint64       `json:"queries"`        // all accounted queries in the window
	Refreshes        uint64       `json:"cacheRefreshes"` // upstream queries of the cache's own, since start
	Clients          []ClientStat `json:"clients"`
	Asked            []NameStat   `json:"askedNames"`
	Missed           []NameStat   `json:"missedNames"`
}

// ClientStat is one client's counts over the window.
type ClientStat struct {
	Client   string `json:"client"`
	Pod      string `json:"pod,omitempty"` // namespace/name, filled by `localdns top --pods`
	Queries  uint64 `json:"queries"`
	Misses   uint64 `json:"misses"`
	NXDOMAIN uint64 `json:"nxdomain"`
	Limited  uint64 `json:"limited"`
	Err      uint64 `json:"queriesErr,omitempty"` // Queries may be this much too high
}

// NameStat is one name's count over the window.
type NameStat struct {
	Name  string `json:"name"`
	Count uint64 `json:"count"`
	Err   uint64 `json:"err,omitempty"`
}

// Top reports up to n clients (the union of the n busiest by queries,
// misses, NXDOMAIN answers and limited queries, ordered by queries) and the
// n most asked and most missed names.
func (t *Tracker) Top(n int) Top {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	r := Top{
		WindowSeconds:    int(window.Seconds()),
		QueriesPerSecond: t.rate,
		Burst:            int(t.burst),
		TrackedClients:   t.buckets.len(),
		Queries:          t.queries.N(now),
		Refreshes:        t.refreshes,
		Clients:          []ClientStat{},
		Asked:            []NameStat{},
		Missed:           []NameStat{},
	}
	seen := map[netip.Addr]bool{}
	for _, w := range []interface {
		Top(now time.Time, n int) []topk.Counter[netip.Addr]
	}{t.queries, t.misses, t.nxdomain, t.limited} {
		for _, c := range w.Top(now, n) {
			if seen[c.Key] {
				continue
			}
			seen[c.Key] = true
			q := t.queries.Count(now, c.Key)
			r.Clients = append(r.Clients, ClientStat{
				Client:   c.Key.String(),
				Queries:  q.Count,
				Err:      q.Err,
				Misses:   t.misses.Count(now, c.Key).Count,
				NXDOMAIN: t.nxdomain.Count(now, c.Key).Count,
				Limited:  t.limited.Count(now, c.Key).Count,
			})
		}
	}
	slices.SortStableFunc(r.Clients, func(a, b ClientStat) int {
		if c := cmp.Compare(b.Queries, a.Queries); c != 0 {
			return c
		}
		return cmp.Compare(a.Client, b.Client)
	})
	for _, c := range t.asked.Top(now, n) {
		r.Asked = append(r.Asked, NameStat{Name: t.names[c.Key], Count: c.Count, Err: c.Err})
	}
	for _, c := range t.missed.Top(now, n) {
		r.Missed = append(r.Missed, NameStat{Name: t.names[c.Key], Count: c.Count, Err: c.Err})
	}
	return r
}
