package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clkTck is USER_HZ, the unit of /proc CPU times; 100 on every Linux
// architecture Go supports.
const clkTck = 100

// cpuSnap is a snapshot of CPU time: the whole machine's busy time, the
// server's, and ours including reaped children (dnsperf).
type cpuSnap struct {
	machine, server, self uint64 // clock ticks
}

// takeCPU reads the snapshot for server pid.
func takeCPU(pid int) (cpuSnap, error) {
	var s cpuSnap
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return s, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/stat: %w", err)
		}
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		s.machine += n
	}
	if s.server, err = procCPU(fmt.Sprintf("/proc/%d/stat", pid), false); err != nil {
		return s, err
	}
	if s.self, err = procCPU("/proc/self/stat", true); err != nil {
		return s, err
	}
	return s, nil
}

// procCPU returns utime+stime of a /proc/PID/stat file, plus cutime+cstime
// (reaped children) when children is set.
func procCPU(path string, children bool) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	// The command name may contain spaces; fields start after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: no command name", path)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime..cstime are fields 14..17.
	if len(f) < 15 {
		return 0, fmt.Errorf("%s: too few fields", path)
	}
	last := 12 // f[11], f[12]: utime, stime
	if children {
		last = 14 // and f[13], f[14]: cutime, cstime
	}
	var sum uint64
	for _, v := range f[11 : last+1] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		sum += n
	}
	return sum, nil
}

// usage is where CPU time went between two snapshots, in cores.
type usage struct {
	server, bench, other float64
}

func cpuUsage(a, b cpuSnap, seconds float64) usage {
	d := func(x, y uint64) float64 {
		if y < x {
			return 0
		}
		return float64(y-x) / clkTck / seconds
	}
	u := usage{server: d(a.server, b.server), bench: d(a.self, b.self)}
	u.other = max(d(a.machine, b.machine)-u.server-u.bench, 0)
	return u
}
