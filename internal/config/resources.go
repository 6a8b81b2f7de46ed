package config

import "fmt"

// AKS's node-level resource fields of the localDNSProfile
// (cpuLimitInMilliCores, memoryLimitInMB) and what follows from them: the
// slice's CPUQuota and MemoryMax, the Go runtime's soft memory limit and the
// cache budget when cache.maxMemory is not given.
//
// The memory limit is split from the top down:
//
//	memoryLimitInMB (the slice's MemoryMax, a hard ceiling: the kernel's OOM killer)
//	  - MemoryHeadroom     what the kernel charges the cgroup outside Go's heap
//	= GoMemoryLimit        GOMEMLIMIT: the collector works harder before this
//	  - RuntimeOverhead    CoreDNS, plugins, goroutines, buffers, queries in flight
//	= 1.5 × cache budget   entries as the cache accounts them, plus Go's garbage
//	                       and map overhead around them under a flood of one-off names
const (
	DefaultCPULimitInMilliCores = 2000
	DefaultMemoryLimitInMB      = 128

	// MemoryHeadroom is the part of memoryLimitInMB outside the Go memory
	// limit: memory the cgroup is charged that Go's limit does not count
	// (the binary's mapped pages, page cache of snapshot writes, kernel
	// buffers of TCP connections).
	MemoryHeadroom = 16 << 20
	// RuntimeOverhead is what localdns needs beside the cache under load.
	RuntimeOverhead = 48 << 20

	// MinMemoryLimitInMB leaves a 1 MiB cache (cache.maxMemory's minimum).
	MinMemoryLimitInMB = (MemoryHeadroom+RuntimeOverhead+(3<<20)/2)>>20 + 1
	// MaxMemoryLimitInMB matches cache.maxMemory's maximum of 64Gi.
	MaxMemoryLimitInMB = 96 << 10

	MinCPULimitInMilliCores = 100
	MaxCPULimitInMilliCores = 1_000_000

	// DefaultMaxMemory is the cache budget derived from the default memory
	// limit: 42 MiB in AKS's 128 MB.
	DefaultMaxMemory = (((DefaultMemoryLimitInMB<<20 - MemoryHeadroom - RuntimeOverhead) * 2 / 3) >> 20) << 20
)

// GoMemoryLimit returns the Go runtime's soft memory limit for a memory
// limit of mb MiB.
func GoMemoryLimit(mb int) int64 {
	return int64(mb)<<20 - MemoryHeadroom
}

// CacheBudget returns the largest cache budget that fits in a memory limit
// of mb MiB, rounded down to a whole MiB; 0 when none fits.
func CacheBudget(mb int) int64 {
	b := (GoMemoryLimit(mb) - RuntimeOverhead) * 2 / 3
	if b < 1<<20 {
		return 0
	}
	return b &^ (1<<20 - 1)
}

// GoMemoryLimitFor returns the Go memory limit for a cache budget within a
// memory limit of mb MiB: the budget's needs when they are below what the
// memory limit allows (a small explicit cache.maxMemory), else the latter.
func GoMemoryLimitFor(budget int64, mb int) int64 {
	return min(budget+budget/2+RuntimeOverhead, GoMemoryLimit(mb))
}

// CPUQuota returns the slice's CPUQuota= value for the profile: a
// percentage of one CPU, rounded up to a whole percent (systemd's unit).
func (p *Profile) CPUQuota() string {
	return fmt.Sprintf("%d%%", (p.CPULimitInMilliCores+9)/10)
}

// MemoryMax returns the slice's MemoryMax= value for the profile.
func (p *Profile) MemoryMax() string {
	return fmt.Sprintf("%dM", p.MemoryLimitInMB)
}

// GoMemLimit returns the GOMEMLIMIT value for the profile.
func (p *Profile) GoMemLimit() int64 {
	return GoMemoryLimitFor(p.Cache.MaxMemory, p.MemoryLimitInMB)
}

// MemoryLimitInMBFor returns the smallest memory limit, in MiB, that a cache
// budget fits in.
func MemoryLimitInMBFor(budget int64) int {
	need := budget + budget/2 + RuntimeOverhead + MemoryHeadroom
	mb := max(int((need+1<<20-1)>>20), MinMemoryLimitInMB)
	for CacheBudget(mb) < budget {
		mb++
	}
	return mb
}
