package netsetup

import (
	"context"
	"fmt"
	"strings"
)

// Repairs says what Reconcile put back.
type Repairs struct {
	// Link counts link repairs: the dummy link recreated, or set up again.
	Link int
	// Addresses counts listener addresses put back.
	Addresses int
	// Rules counts rebuilds of our nftables table (0 or 1).
	Rules int
	// Details says what was wrong, one line each, for the log.
	Details []string
}

// Total is the number of repairs.
func (r Repairs) Total() int { return r.Link + r.Addresses + r.Rules }

// String is a one-line summary for the log.
func (r Repairs) String() string {
	if r.Total() == 0 {
		return "nothing to repair"
	}
	return strings.Join(r.Details, "; ")
}

// Reconcile checks the link, the addresses and the conntrack bypass and puts
// back what is missing or different; it returns what it repaired, and counts it
// in Config.Metrics (localdns_reconcile_repairs_total). The daemon calls it
// periodically once EnsureRules has run (it installs the rules when they are
// missing, so starting it earlier would defeat the probe-first order).
//
// ctx is checked between steps; netlink calls themselves are short and are not
// interrupted.
func Reconcile(ctx context.Context, cfg Config) (Repairs, error) {
	var rep Repairs
	cfg, err := cfg.withDefaults()
	if err != nil {
		return rep, err
	}
	defer func() { cfg.Metrics.repaired(rep) }()

	res, step, err := ensureAddresses(cfg)
	if res.CreatedLink {
		rep.Link++
		rep.Details = append(rep.Details, "link "+res.Link+" was missing, recreated")
	}
	if res.LinkSetUp {
		rep.Link++
		rep.Details = append(rep.Details, "link "+res.Link+" was down, set up")
	}
	if len(res.Added) > 0 {
		rep.Addresses += len(res.Added)
		rep.Details = append(rep.Details, fmt.Sprintf("addresses %v were missing on %s, added", res.Added, res.Link))
	}
	if err != nil {
		cfg.Metrics.SetupError(step)
		return rep, err
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	rc, err := checkRules(cfg)
	if err != nil {
		cfg.Metrics.SetupError(StepRules)
		return rep, err
	}
	if rc.intact {
		return rep, nil
	}
	if step, err := ensureRules(cfg); err != nil {
		cfg.Metrics.SetupError(step)
		return rep, err
	}
	rep.Rules++
	rep.Details = append(rep.Details, "nftables: "+rc.why+", table rebuilt")
	return rep, nil
}
