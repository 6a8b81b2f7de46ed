package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pinning splits the machine's CPUs between the two sides of the experiment,
// identically in both scenarios. On the nodes of the seed experiment the DNS
// servers do not share their CPUs with the load generators or the network;
// on one small machine they would, and the tails would measure the CPU
// scheduler. So the load side (dnsperf in the pods, the lab itself parsing
// their output, and the emulation: delay proxies and external resolver) runs
// on one CPU and the servers under test (the CoreDNS pods, in both
// scenarios, and localdns) on another.
type pinning struct {
	load    string // taskset(1) CPU list of the load side; "" when not pinned
	servers string // taskset(1) CPU list of the servers; "" when not pinned
	loadCPU int    // the CPUs' numbers, for their /proc/stat lines (-1: none)
	srvCPU  int
	note    string // what was done, for the report
}

// planPinning picks the first two CPUs this process may run on. With fewer
// than two (or pinning off) nothing is pinned and the note says so.
func planPinning(enabled bool) pinning {
	p := pinning{loadCPU: -1, srvCPU: -1}
	if !enabled {
		p.note = "not pinned (-pin=false): the load generators, the emulation and the servers under test shared every CPU, so the tails include their contention for the CPUs"
		return p
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		p.note = fmt.Sprintf("not pinned (CPU affinity unreadable: %v): the load generators, the emulation and the servers under test shared every CPU", err)
		return p
	}
	var cpus []int
	for i := 0; i < len(set)*64 && len(cpus) < 2; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		p.note = fmt.Sprintf("not pinned: only %d CPU available, so the load generators, the emulation and the servers under test shared it and the tails include their contention for it", set.Count())
		return p
	}
	p.loadCPU, p.srvCPU = cpus[0], cpus[1]
	p.load, p.servers = strconv.Itoa(cpus[0]), strconv.Itoa(cpus[1])
	p.note = fmt.Sprintf("pinned, both scenarios alike: the load side (dnsperf in the pods, the lab process reading their output, and the emulation: delay proxies and external resolver) on CPU %d; "+
		"the server the pods query on CPU %[2]d: the CoreDNS pods in scenario A, localdns in scenario B. "+
		"In scenario B the CoreDNS pods are what localdns forwards to, on other nodes in a cluster; they move to CPU %[1]d with the rest of the cluster, so that each scenario's server has CPU %[2]d to itself. "+
		"On the seed's real nodes the DNS servers do not share CPUs with the load generators or the network", cpus[0], cpus[1])
	if n := set.Count(); n > 2 {
		p.note += fmt.Sprintf("; the machine's other %d CPUs were not used by the lab", n-2)
	}
	return p
}

// pinSelf moves every thread of this process to cpu. Threads the Go runtime
// creates later are cloned from these and inherit it, and so do the
// processes the lab starts (taskset overrides it for the servers).
func pinSelf(cpu int) error {
	return pinProcess("self", cpu)
}

// pinProcess moves every thread of process pid ("self" or a number) to
// cpu; threads it creates later inherit that.
func pinProcess(pid string, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/" + pid + "/task")
	if err != nil {
		return fmt.Errorf("pin process %s to CPU %d: %w", pid, cpu, err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("pin thread %d of process %s to CPU %d: %w", tid, pid, cpu, err)
		}
	}
	return nil
}

// autogroupNice gives the lab's scheduler autogroup the nice value n, so
// that -nice works against other sessions: with autogroup scheduling on
// (kernel.sched_autogroup_enabled), nice values only rank tasks within one
// session's group, and every session's group gets an equal share of a CPU,
// whatever its tasks' nice values. restore puts the old value back. With
// autogroup scheduling off it does nothing: nice values alone count.
func autogroupNice(n int) (restore func(), note string, err error) {
	restore = func() {}
	if on, err := os.ReadFile("/proc/sys/kernel/sched_autogroup_enabled"); err != nil || strings.TrimSpace(string(on)) != "1" {
		return restore, "autogroup scheduling off: nice values alone rank the lab against other work", nil
	}
	data, err := os.ReadFile("/proc/self/autogroup")
	if err != nil {
		return restore, "", fmt.Errorf("read the lab's autogroup: %w", err)
	}
	group, old, ok, err := parseAutogroup(string(data))
	if err != nil {
		return restore, "", err
	}
	if !ok {
		// The kernel prints nothing for a task in the default autogroup,
		// the one of init's session: a process started by a service
		// manager or CI runner that never called setsid. Its tasks are
		// scheduled in the root group, where nice values alone count.
		return restore, "the lab runs in init's session, outside any scheduler autogroup: nice values alone rank it against other work", nil
	}
	if err := os.WriteFile("/proc/self/autogroup", []byte(strconv.Itoa(n)), 0); err != nil {
		return restore, "", fmt.Errorf("set the lab's autogroup nice to %d: %w", n, err)
	}
	restore = func() { os.WriteFile("/proc/self/autogroup", []byte(strconv.Itoa(old)), 0) }
	return restore, fmt.Sprintf("the lab's scheduler autogroup (%s, the session it runs in) at nice %d as well, as the kernel schedules sessions against each other by their autogroup's nice", group, n), nil
}

// parseAutogroup reads /proc/self/autogroup: "/autogroup-274 nice 0" gives
// the group's name and nice value. An empty file (ok false, no error) means
// the task is in init's session, the default autogroup, which the kernel
// does not print.
func parseAutogroup(data string) (group string, nice int, ok bool, err error) {
	data = strings.TrimSpace(data)
	if data == "" {
		return "", 0, false, nil
	}
	f := strings.Fields(data)
	if len(f) != 3 || f[1] != "nice" || !strings.HasPrefix(f[0], "/autogroup-") {
		return "", 0, false, fmt.Errorf("unexpected /proc/self/autogroup %q", data)
	}
	nice, err = strconv.Atoi(f[2])
	if err != nil {
		return "", 0, false, fmt.Errorf("unexpected /proc/self/autogroup %q: %w", data, err)
	}
	return f[0], nice, true, nil
}
