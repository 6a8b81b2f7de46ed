package node

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// socketUnit holds the listener sockets as systemd's localdns.socket does:
// UDP and TCP on both listener addresses, bound with IP_FREEBIND before the
// addresses exist (FreeBind=yes), UDP receive buffers forced to 8 MiB
// (ReceiveBuffer=8M). It keeps its own descriptors for as long as it lives,
// so a process that closes its copies on exit leaves the sockets queueing.
type socketUnit struct {
	files []*os.File // fds 3.. of the service, in Listen* order
}

// rcvbuf is localdns.socket's ReceiveBuffer=.
const rcvbuf = 8 << 20

func holdSockets(t *testing.T, ns string) *socketUnit {
	t.Helper()
	u := &socketUnit{}
	control := func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1); serr != nil {
				return
			}
			if strings.HasPrefix(network, "udp") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	lc := net.ListenConfig{Control: control}
	lc.SetMultipathTCP(false) // systemd's ListenStream= is plain TCP
	err := withNS(t, ns, func() error {
		for _, a := range []string{nodeListener, clusterListener} {
			addr := a + ":53"
			pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
			if err != nil {
				return fmt.Errorf("bind udp %s: %w", addr, err)
			}
			ln, err := lc.Listen(context.Background(), "tcp4", addr)
			if err != nil {
				pc.Close()
				return fmt.Errorf("listen tcp %s: %w", addr, err)
			}
			uf, err := pc.(*net.UDPConn).File()
			pc.Close()
			if err != nil {
				ln.Close()
				return err
			}
			tf, err := ln.(*net.TCPListener).File()
			ln.Close()
			if err != nil {
				uf.Close()
				return err
			}
			u.files = append(u.files, uf, tf)
		}
		return nil
	})
	if err != nil {
		u.close()
		t.Fatalf("holding the listener sockets: %v", err)
	}
	t.Cleanup(u.close)
	return u
}

func (u *socketUnit) close() {
	for _, f := range u.files {
		f.Close()
	}
	u.files = nil
}

// start starts a socket-activated `localdns run` on the held sockets.
func (u *socketUnit) start(t *testing.T, ns, cfg string) *proc {
	t.Helper()
	return startRun(t, ns, cfg, runOpts{
		env:       []string{"LISTEN_FDS=" + strconv.Itoa(len(u.files)), "LISTEN_FDNAMES=localdns.socket:localdns.socket:localdns.socket:localdns.socket"},
		files:     u.files,
		listenPID: true,
	})
}

// dnsperfResult is what dnsperf reports.
type dnsperfResult struct {
	sent, completed, lost  int
	avgLatency, maxLatency time.Duration
	output                 string
}

var (
	sentRE      = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	completedRE = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	lostRE      = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	latencyRE   = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+) \(min [0-9.]+, max ([0-9.]+)\)`)
)

func parseDnsperf(out string) (dnsperfResult, error) {
	r := dnsperfResult{output: out}
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *int
	}{{sentRE, &r.sent}, {completedRE, &r.completed}, {lostRE, &r.lost}} {
		m := f.re.FindStringSubmatch(out)
		if m == nil {
			return r, fmt.Errorf("no %q in dnsperf output", f.re)
		}
		*f.dst, _ = strconv.Atoi(m[1])
	}
	if m := latencyRE.FindStringSubmatch(out); m != nil {
		avg, _ := strconv.ParseFloat(m[1], 64)
		maxl, _ := strconv.ParseFloat(m[2], 64)
		r.avgLatency = time.Duration(avg * float64(time.Second))
		r.maxLatency = time.Duration(maxl * float64(time.Second))
	}
	return r, nil
}

// TestRestartWithoutLossUnderSocketActivation replaces localdns twice while
// a pod sends 5k QPS of cached names to the cluster listener, as systemd
// does on `systemctl restart localdns` with localdns.socket holding the
// sockets: SIGTERM, wait for exit, start a new process on the same sockets.
// Queries that arrive in between wait in the sockets' receive queues; none
// may be lost. A SIGHUP reload on the inherited sockets follows, under the
// same load.
func TestRestartWithoutLossUnderSocketActivation(t *testing.T) {
	const (
		qps      = 5000
		duration = 15 * time.Second
		names    = 200
	)
	requireRoot(t)
	if _, err := exec.LookPath("dnsperf"); err != nil {
		t.Skipf("skipping: dnsperf not installed (Debian package dnsperf): %v", err)
	}
	node := newNS(t, "node")
	pod := newPod(t, node)
	up := startUpstreams(t, node)
	prof := newProfile(t, up)
	cfg := prof.write(t)
	before := nodeState(t, node)

	sockets := holdSockets(t, node)
	d := sockets.start(t, node, cfg)
	waitServing(t, node, d)
	if !strings.Contains(d.Log(), "serving sockets passed by systemd") {
		t.Fatalf("localdns did not take the passed sockets; log:\n%s", d.Log())
	}
	// The receive buffer systemd set is the one localdns serves on.
	if ss, err := exec.Command("ip", "netns", "exec", node, "ss", "-uamn", "src", clusterListener+":53").CombinedOutput(); err == nil {
		t.Logf("cluster listener UDP socket: %s", strings.Join(strings.Fields(string(ss)), " "))
	}

	// Cached names: warm them once from the pod.
	var qfile bytes.Buffer
	for i := range names {
		name := fmt.Sprintf("r%d.restart.example.org", i)
		fmt.Fprintf(&qfile, "%s A\n", name)
		if r, err := exchange(t, pod, "udp", clusterListener+":53", name, dns.TypeA, 2*time.Second); err != nil || len(r.Answer) != 1 {
			t.Fatalf("warming %s: %v %v", name, r, err)
		}
	}
	queryFile := filepath.Join(t.TempDir(), "queries")
	if err := os.WriteFile(queryFile, qfile.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	upBefore := up.cluster.Total()
	nodeUDP, podUDP := udpStats(t, node), udpStats(t, pod)

	// -q: up to 20k outstanding, so dnsperf keeps sending at full rate while
	// no process reads (its default of 100 would pause it after 20 ms and
	// hide what the restart gap costs). -b: a 4 MiB socket buffer (the
	// machine's rmem_max) for dnsperf's one socket: the new process answers
	// the queued queries in a burst, which overflows the default 208 KiB
	// buffer of a single client socket (seen as RcvbufErrors in the pod
	// namespace, equal to "Queries lost"). Real pods spread over many sockets.
	perf := exec.Command("ip", "netns", "exec", pod, "dnsperf", "-s", clusterListener, "-d", queryFile,
		"-Q", strconv.Itoa(qps), "-l", strconv.Itoa(int(duration/time.Second)), "-t", "5", "-q", "20000", "-b", "4096")
	var perfOut bytes.Buffer
	perf.Stdout, perf.Stderr = &perfOut, &perfOut
	if err := perf.Start(); err != nil {
		t.Fatal(err)
	}
	perfDone := make(chan struct{})
	var perfErr error
	go func() {
		perfErr = perf.Wait()
		close(perfDone)
	}()
	t.Cleanup(func() {
		select {
		case <-perfDone:
		default:
			perf.Process.Kill()
			<-perfDone
		}
	})

	// TCP alongside: one connection per query, from the pod, for as long as
	// dnsperf runs. The held listening socket keeps accepting (the backlog)
	// while no process runs.
	type tcpFailure struct {
		at  time.Time
		err string
	}
	type tcpResult struct {
		ok     int
		failed []tcpFailure
		max    time.Duration
	}
	tcpDone := make(chan tcpResult, 1)
	go func() {
		var r tcpResult
		err := withNS(t, pod, func() error {
			c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-perfDone:
					return nil
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("r%d.restart.example.org.", i%names), dns.TypeA)
				sent := time.Now()
				resp, _, err := c.Exchange(m, clusterListener+":53")
				took := time.Since(sent)
				r.max = max(r.max, took)
				if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
					r.failed = append(r.failed, tcpFailure{sent, fmt.Sprintf("%v %v (after %s)", err, resp, took.Round(time.Millisecond))})
				} else {
					r.ok++
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
		if err != nil {
			r.failed = append(r.failed, tcpFailure{time.Now(), err.Error()})
		}
		tcpDone <- r
	}()

	start := time.Now()
	for i, at := range []time.Duration{4 * time.Second, 9 * time.Second} {
		time.Sleep(time.Until(start.Add(at)))
		sigterm := time.Now()
		d.stop(t)
		exited := time.Now()
		d = sockets.start(t, node, cfg)
		waitServing(t, node, d)
		t.Logf("restart %d at %s: old process exited %s after SIGTERM, new one answered %s later; gap %s",
			i+1, at, exited.Sub(sigterm).Round(time.Millisecond), time.Since(exited).Round(time.Millisecond), time.Since(sigterm).Round(time.Millisecond))
		if time.Since(sigterm) > time.Second {
			t.Logf("slow restart %d: the new process's log so far:\n%s", i+1, d.Log())
		}
	}
	// And a reload on the inherited sockets: SIGHUP swaps the server
	// generation on the same sockets.
	time.Sleep(time.Until(start.Add(12 * time.Second)))
	d.signal(t, syscall.SIGHUP)
	if _, ok := eventually(5*time.Second, func() bool { return strings.Contains(d.Log(), "msg=reloaded") }); !ok {
		t.Errorf("no reload logged within 5s of SIGHUP; log:\n%s", d.Log())
	}

	select {
	case <-perfDone:
		if perfErr != nil {
			t.Fatalf("dnsperf: %v\n%s", perfErr, perfOut.String())
		}
	case <-time.After(duration + 15*time.Second):
		t.Fatalf("dnsperf did not finish\n%s", perfOut.String())
	}
	res, err := parseDnsperf(perfOut.String())
	if err != nil {
		t.Fatalf("%v:\n%s", err, perfOut.String())
	}
	t.Logf("dnsperf at %d QPS for %s with 2 restarts and a reload: sent %d, completed %d, lost %d; latency avg %s, max %s; the upstream got %d queries meanwhile (health checks included) for %d cached names",
		qps, duration, res.sent, res.completed, res.lost, res.avgLatency, res.maxLatency, up.cluster.Total()-upBefore, names)
	tcp := <-tcpDone
	t.Logf("TCP alongside, one connection per query: %d answered, %d failed, slowest %s", tcp.ok, len(tcp.failed), tcp.max.Round(time.Millisecond))
	// A connection the stopping generation accepted is drained (answered)
	// before its server stops (internal/daemon drainListener): no TCP query
	// may fail across restarts and reloads.
	if len(tcp.failed) > 0 {
		var lines []string
		for _, f := range tcp.failed {
			lines = append(lines, fmt.Sprintf("%s: %s", f.at.Format("15:04:05.000"), f.err))
		}
		t.Errorf("%d TCP queries failed across the restarts and the reload:\n  %s", len(tcp.failed), strings.Join(lines, "\n  "))
	}
	nodeUDP2, podUDP2 := udpStats(t, node), udpStats(t, pod)
	t.Logf("UDP drops during the run: node namespace (listeners) RcvbufErrors +%d InErrors +%d NoPorts +%d; pod namespace (dnsperf) RcvbufErrors +%d InErrors +%d",
		nodeUDP2["RcvbufErrors"]-nodeUDP["RcvbufErrors"], nodeUDP2["InErrors"]-nodeUDP["InErrors"], nodeUDP2["NoPorts"]-nodeUDP["NoPorts"],
		podUDP2["RcvbufErrors"]-podUDP["RcvbufErrors"], podUDP2["InErrors"]-podUDP["InErrors"])
	if n := nodeUDP2["RcvbufErrors"] - nodeUDP["RcvbufErrors"]; n != 0 {
		t.Errorf("%d datagrams dropped on a full receive queue in the node namespace (listener sockets)", n)
	}
	if res.lost != 0 || res.completed != res.sent {
		t.Errorf("%d of %d queries lost across the restarts:\n%s", res.lost, res.sent, res.output)
	}
	if res.sent < qps*int(duration/time.Second)*8/10 {
		t.Errorf("dnsperf sent only %d queries, want about %d: the load did not run at %d QPS", res.sent, qps*int(duration/time.Second), qps)
	}

	// A socket-activated stop leaves addresses and rules for the next
	// process; the service's ExecStopPost (--keep-if-held) keeps them while
	// the sockets are held, the socket unit's removes them.
	d.stop(t)
	if got := listenerAddrs(t, node); got[clusterListener] != 1 || !hasTable(t, node) {
		t.Errorf("after a socket-activated stop: addresses %v, table %t; want both kept for the next process", got, hasTable(t, node))
	}
	out := inNS(t, node, binary, "teardown", "--keep-if-held", "--config", cfg)
	if !strings.HasPrefix(out, "kept:") || !hasTable(t, node) {
		t.Errorf("teardown --keep-if-held with the sockets held: %q, table %t; want kept", out, hasTable(t, node))
	}
	sockets.close()
	out = inNS(t, node, binary, "teardown", "--keep-if-held", "--config", cfg)
	if !strings.HasPrefix(out, "removed:") {
		t.Errorf("teardown --keep-if-held with the sockets closed: %q, want removed", out)
	}
	if after := nodeState(t, node); after != before {
		t.Errorf("node after the socket unit stopped differs from before:\n%s\nbefore:\n%s", after, before)
	}
}
