package nodecache

import "time"

// Hooks for the external tests (package nodecache_test), which start CoreDNS
// through internal/plugins and so cannot live in this package.
var (
	HitsTotal            = hitsTotal
	MissesTotal          = missesTotal
	StaleTotal           = staleTotal
	CoalescedTotal       = coalescedTotal
	PrefetchesTotal      = prefetchesTotal
	RefreshFailuresTotal = refreshFailuresTotal
	SnapshotRestored     = snapshotRestored
	PinRefreshesTotal    = pinRefreshes
)

const (
	StaleTTL          = staleTTL
	AdvertisedUDPSize = advertisedUDPSize
)

// ResetShared replaces the process-wide store with an empty one whose clock
// is clock, as if the process had just started. The old store's periodic
// snapshot is stopped.
func ResetShared(clock func() time.Time) {
	s := NewStore(defaultMemory)
	s.clock = clock
	shared.mu.Lock()
	old := shared.store
	shared.store = s
	shared.mu.Unlock()
	if old != nil {
		old.snap.mu.Lock()
		old.snap.stopLocked()
		old.snap.mu.Unlock()
		old.snap.lock.release()
	}
}
