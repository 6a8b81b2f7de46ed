package daemon

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/plugin/nodecache"
)

// setMemoryLimit gives the Go runtime a soft memory limit, unless GOMEMLIMIT
// is set: from the profile's memoryLimitInMB and cache budget
// (config.GoMemoryLimitFor), or, for a hand-written Corefile (p nil), from
// the cache budget alone.
//
// The cache accounts its entries to the byte, but Go collects garbage only
// when the heap has grown by GOGC (100%) since the last collection: under a
// flood of one-off names (each evicting another) the process measured 115 MiB
// of RSS for a 32 MiB budget without a limit. With the limit the collector
// runs earlier instead, and the budget bounds the process, not just the cache.
func setMemoryLimit(log *slog.Logger, p *config.Profile) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	store := nodecache.Shared()
	if store == nil {
		return
	}
	budget := store.Budget()
	limit := budget + budget/2 + config.RuntimeOverhead
	if p != nil {
		limit = config.GoMemoryLimitFor(budget, p.MemoryLimitInMB)
	}
	debug.SetMemoryLimit(limit)
	log.Info("Go memory limit set from the cache budget and memoryLimitInMB", "cacheBudget", budget, "limit", limit)
}
