package upstream

import (
	"math/rand/v2"
	"sync/atomic"
)

// policy orders a group's upstreams for one query. Forward's policies are
// unexported, so these three are the same rules over our member type.
type policy interface {
	List([]*member) []*member
	String() string
}

func newPolicy(name string) (policy, bool) {
	switch name {
	case "sequential":
		return sequential{}, true
	case "round_robin":
		return &roundRobin{}, true
	case "random":
		return random{}, true
	}
	return nil, false
}

// sequential always tries the upstreams in configured order.
type sequential struct{}

func (sequential) String() string             { return "sequential" }
func (sequential) List(m []*member) []*member { return m }

// roundRobin starts each query at the next upstream.
type roundRobin struct{ robin atomic.Uint32 }

func (*roundRobin) String() string { return "round_robin" }

func (r *roundRobin) List(m []*member) []*member {
	if len(m) < 2 {
		return m
	}
	i := int(r.robin.Add(1) % uint32(len(m))) // #nosec G115 -- a handful of upstreams
	out := make([]*member, 0, len(m))
	out = append(out, m[i:]...)
	return append(out, m[:i]...)
}

// random tries the upstreams in a random order.
type random struct{}

func (random) String() string { return "random" }

func (random) List(m []*member) []*member {
	if len(m) < 2 {
		return m
	}
	out := make([]*member, len(m))
	for i, j := range rand.Perm(len(m)) {
		out[i] = m[j]
	}
	return out
}
