package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/test/lab/topo"
)

// proc is a process the lab started inside one of its namespaces.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// procs are the lab's processes, stopped in reverse order of start.
type procs struct {
	logDir string
	nice   int // nice(1) adjustment for every process (0: none)
	list   []*proc
}

// start runs argv inside netns ("": the lab's own namespace), on the CPUs cpus ("": anywhere), with its
// output in logDir/name.log. `ip netns exec` and taskset exec the command, so
// the PID is the command's own; its children inherit the CPUs.
func (ps *procs) start(name, netns, cpus string, argv ...string) (*proc, error) {
	logPath := filepath.Join(ps.logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	args := argv
	if netns != "" {
		args = topo.In(netns, argv...)
	}
	if ps.nice != 0 {
		// Linux nice values are per thread: setpriority in this Go process
		// would not reach children forked from its other threads.
		args = append([]string{"nice", "-n", strconv.Itoa(ps.nice)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ps.list = append(ps.list, p)
	logf("started %s (pid %d): %s", name, cmd.Process.Pid, strings.Join(args, " "))
	return p, nil
}

// exited reports whether p has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to p.
func (p *proc) signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// stop sends SIGTERM and waits, then SIGKILL.
func (p *proc) stop(timeout time.Duration) {
	if p.exited() {
		return
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n bytes of p's log.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// stopAll stops every process, newest first.
func (ps *procs) stopAll() {
	for i := len(ps.list) - 1; i >= 0; i-- {
		ps.list[i].stop(15 * time.Second)
	}
	ps.list = nil
}

// killNamespacePids ends the processes still inside the lab's namespaces
// (left by a lab run that was killed before its cleanup): they can only be
// the lab's own.
func killNamespacePids(namespaces []string) {
	for _, ns := range namespaces {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				logf("ending leftover process %d in %s", pid, ns)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s lab: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
