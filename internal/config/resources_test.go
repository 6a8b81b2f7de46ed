package config

import (
	"errors"
	"testing"
)

// TestResourceDefaults checks AKS's defaults (2000 milli-cores, 128 MB) and
// that the default cache budget and Go memory limit are the ones derived
// from them, whether the profile is empty or built in code.
func TestResourceDefaults(t *testing.T) {
	for name, p := range map[string]*Profile{"Default()": Default(), "empty profile": mustParse(t, "")} {
		if p.CPULimitInMilliCores != 2000 || p.MemoryLimitInMB != 128 {
			t.Errorf("%s: cpuLimitInMilliCores %d memoryLimitInMB %d, want AKS's 2000 and 128", name, p.CPULimitInMilliCores, p.MemoryLimitInMB)
		}
		if p.Cache.MaxMemory != 42<<20 || p.Cache.MaxMemory != CacheBudget(128) {
			t.Errorf("%s: cache budget %d, want 42 MiB (CacheBudget(128) = %d)", name, p.Cache.MaxMemory, CacheBudget(128))
		}
		if got := p.GoMemLimit(); got > 112<<20 || got < 110<<20 {
			t.Errorf("%s: Go memory limit %d MiB, want 128 less the 16 MiB headroom", name, got>>20)
		}
		if p.CPUQuota() != "200%" || p.MemoryMax() != "128M" {
			t.Errorf("%s: CPUQuota=%s MemoryMax=%s, want 200%% and 128M", name, p.CPUQuota(), p.MemoryMax())
		}
	}
}

// TestCacheBudgetFollowsMemoryLimit: without cache.maxMemory the budget is
// derived from memoryLimitInMB, wherever and however the field is spelled.
func TestCacheBudgetFollowsMemoryLimit(t *testing.T) {
	for _, doc := range []string{
		"memoryLimitInMB: 256\ncpuLimitInMilliCores: 500",
		`{"memoryLimitInMb": 256, "cpuLimitInMilliCores": 500}`,
		`{"localDNSProfile": {"mode": "Required", "cpuLimitInMilliCores": 500, "memoryLimitInMB": 256}}`,
	} {
		p := mustParse(t, doc)
		if p.MemoryLimitInMB != 256 || p.CPULimitInMilliCores != 500 {
			t.Errorf("%s: memoryLimitInMB %d cpuLimitInMilliCores %d", doc, p.MemoryLimitInMB, p.CPULimitInMilliCores)
		}
		// (256 - 16 - 48) * 2/3 = 128 MiB
		if p.Cache.MaxMemory != 128<<20 {
			t.Errorf("%s: cache budget %d MiB, want 128", doc, p.Cache.MaxMemory>>20)
		}
		if p.GoMemLimit() != 240<<20 {
			t.Errorf("%s: Go memory limit %d MiB, want 240", doc, p.GoMemLimit()>>20)
		}
		if p.CPUQuota() != "50%" || p.MemoryMax() != "256M" {
			t.Errorf("%s: CPUQuota=%s MemoryMax=%s", doc, p.CPUQuota(), p.MemoryMax())
		}
	}
}

// TestExplicitMaxMemory: a cache.maxMemory that fits is kept, and a smaller
// one lowers the Go memory limit to what the cache needs; one that does not
// fit is a problem naming the memory limit it would need.
func TestExplicitMaxMemory(t *testing.T) {
	p := mustParse(t, "memoryLimitInMB: 192\ncache: {maxMemory: 64Mi}")
	if p.Cache.MaxMemory != 64<<20 {
		t.Errorf("cache budget %d MiB, want the 64 given", p.Cache.MaxMemory>>20)
	}
	if p.GoMemLimit() != (64+32+48)<<20 {
		t.Errorf("Go memory limit %d MiB, want 144 (1.5 x 64 + 48)", p.GoMemLimit()>>20)
	}
	p = mustParse(t, "cache: {maxMemory: 16Mi}")
	if p.GoMemLimit() != (16+8+48)<<20 {
		t.Errorf("small cache: Go memory limit %d MiB, want 72 (below the 112 the memory limit allows)", p.GoMemLimit()>>20)
	}

	_, err := Parse([]byte("cache: {maxMemory: 64Mi}"))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("64Mi in the default 128 MB: error %v, want Problems", err)
	}
	checkProblems(t, ps, []problem{{"cache.maxMemory", "does not fit in memoryLimitInMB 128 (at most 42Mi there): raise memoryLimitInMB to 160"}})
	if _, err := Parse([]byte("memoryLimitInMB: 160\ncache: {maxMemory: 64Mi}")); err != nil {
		t.Errorf("the memory limit the problem names must be enough: %v", err)
	}
	if _, err := Parse([]byte("memoryLimitInMB: 159\ncache: {maxMemory: 64Mi}")); err == nil {
		t.Errorf("one MiB less than the named limit was accepted")
	}
}

func TestResourceFieldProblems(t *testing.T) {
	cases := []struct {
		doc  string
		want []problem
	}{
		{"memoryLimitInMB: 65", []problem{{"memoryLimitInMB", "between 66 and 98304"}}},
		{"memoryLimitInMB: 100000", []problem{{"memoryLimitInMB", "between 66 and 98304"}}},
		{`memoryLimitInMB: "128Mi"`, []problem{{"memoryLimitInMB", "whole number"}}},
		{"cpuLimitInMilliCores: 0", []problem{{"cpuLimitInMilliCores", "between 100 and 1000000"}}},
		{`cpuLimitInMilliCores: "2"`, []problem{{"cpuLimitInMilliCores", "whole number"}}},
		{"cpuLimitInMilliCores: 1.5", []problem{{"cpuLimitInMilliCores", "whole number"}}},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.doc))
		var ps Problems
		if !errors.As(err, &ps) {
			t.Errorf("%s: error %v, want Problems", c.doc, err)
			continue
		}
		checkProblems(t, ps, c.want)
	}

	p := Default()
	p.CPULimitInMilliCores, p.MemoryLimitInMB = 50, 32
	err := p.Validate()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("built in code: error %v, want Problems", err)
	}
	checkProblems(t, ps, []problem{
		{"cpuLimitInMilliCores", "between 100 and 1000000"},
		{"memoryLimitInMB", "between 66 and 98304"},
	})
}

// TestMemorySplit checks the derivation over the whole range: the budget,
// 1.5 times over plus the runtime and the headroom, fits in the limit; the
// smallest limit accepted leaves a 1 MiB cache; MemoryLimitInMBFor inverts
// CacheBudget.
func TestMemorySplit(t *testing.T) {
	if b := CacheBudget(MinMemoryLimitInMB); b != 1<<20 {
		t.Errorf("CacheBudget(%d) = %d, want 1 MiB", MinMemoryLimitInMB, b)
	}
	if b := CacheBudget(MinMemoryLimitInMB - 1); b != 0 {
		t.Errorf("CacheBudget(%d) = %d, want 0 (no cache fits)", MinMemoryLimitInMB-1, b)
	}
	for mb := MinMemoryLimitInMB; mb <= 8192; mb++ {
		b := CacheBudget(mb)
		if b+b/2+RuntimeOverhead+MemoryHeadroom > int64(mb)<<20 {
			t.Fatalf("CacheBudget(%d) = %d does not fit", mb, b)
		}
		if GoMemoryLimitFor(b, mb) > GoMemoryLimit(mb) {
			t.Fatalf("Go limit for %d MiB above the limit's", mb)
		}
		if need := MemoryLimitInMBFor(b); need > mb || CacheBudget(need) < b {
			t.Fatalf("MemoryLimitInMBFor(CacheBudget(%d)) = %d", mb, need)
		}
	}
	if CacheBudget(MaxMemoryLimitInMB) > 64<<30 {
		t.Errorf("the largest memory limit derives %d, above cache.maxMemory's 64Gi", CacheBudget(MaxMemoryLimitInMB))
	}
	for _, c := range []struct {
		milli int
		want  string
	}{{100, "10%"}, {1505, "151%"}, {2000, "200%"}, {16000, "1600%"}} {
		p := Default()
		p.CPULimitInMilliCores = c.milli
		if got := p.CPUQuota(); got != c.want {
			t.Errorf("CPUQuota for %d milli-cores = %s, want %s", c.milli, got, c.want)
		}
	}
}
