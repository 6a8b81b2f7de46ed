package daemon

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/localdns/localdns/plugin/nodecache"
)

// runtimeOverhead is what localdns needs beside the cache: the Go runtime,
// CoreDNS's servers and plugins, buffers and in-flight queries.
const runtimeOverhead = 48 << 20

// setMemoryLimit gives the Go runtime a soft memory limit derived from the
// cache budget, unless GOMEMLIMIT is set (the systemd unit sets it).
//
// The cache accounts its entries to the byte, but Go collects garbage only
// when the heap has grown by GOGC (100%) since the last collection: under a
// flood of one-off names (each evicting another) the process measured 115 MiB
// of RSS for a 32 MiB budget without a limit. With the limit the collector
// runs earlier instead, and the budget bounds the process, not just the cache.
func setMemoryLimit(log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	store := nodecache.Shared()
	if store == nil {
		return
	}
	limit := store.Budget() + store.Budget()/2 + runtimeOverhead
	debug.SetMemoryLimit(limit)
	log.Info("Go memory limit set from the cache budget", "cacheBudget", store.Budget(), "limit", limit)
}
