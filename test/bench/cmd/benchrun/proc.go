package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// procs tracks every child process so that all of them are killed on exit,
// on a signal and on a deadline, whatever path the run takes.
type procs struct {
	mu   sync.Mutex
	live map[int]*child
}

// child is a started process; done is closed once it has exited and been
// reaped.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func newProcs() *procs { return &procs{live: map[int]*child{}} }

// start runs argv in its own process group, dying with us (Pdeathsig).
func (p *procs) start(argv []string, logPath string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, fmt.Errorf("server log: %w", err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		defer f.Close() // the child has its own descriptor
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	p.mu.Lock()
	p.live[c.pid()] = c
	p.mu.Unlock()
	return c, nil
}

// stop sends SIGTERM to c's process group, SIGKILL after grace, and waits
// until it is reaped.
func (p *procs) stop(c *child, grace time.Duration) {
	p.mu.Lock()
	delete(p.live, c.pid())
	p.mu.Unlock()
	select {
	case <-c.done:
		return
	default:
	}
	syscall.Kill(-c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		syscall.Kill(-c.pid(), syscall.SIGKILL)
		<-c.done
	}
}

// killAll stops every tracked process (exit path).
func (p *procs) killAll() {
	p.mu.Lock()
	cs := make([]*child, 0, len(p.live))
	for _, c := range p.live {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	for _, c := range cs {
		p.stop(c, 2*time.Second)
	}
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1 at the time
// of the call.
func freePort() (int, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find free port: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("find free port: no port free for both udp and tcp")
}

// waitDNS polls addr until it answers an A question or ctx ends.
func waitDNS(ctx context.Context, addr string, c *child) error {
	cl := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg).SetQuestion("ready-probe.bench.example.", dns.TypeA)
	for {
		if r, _, err := cl.ExchangeContext(ctx, m, addr); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("server exited before answering on %s: %v", addr, c.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("server on %s not answering: %w", addr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// procStatus reads the kB fields of /proc/PID/status we report, in bytes.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("read process status: %w", err)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(k, "Vm") {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				out[k] = n * 1024
			}
		}
	}
	return out, nil
}

// scrapeMetrics fetches a Prometheus text endpoint and returns the samples
// whose metric name is in names (labels summed per name).
func scrapeMetrics(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		if !want[name] {
			continue
		}
		rest := line[len(name):]
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}
