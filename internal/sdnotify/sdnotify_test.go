package sdnotify

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/testnotify"
)

// listenNotify opens the test's stand-in for systemd's notification socket
// and points NOTIFY_SOCKET at it.
func listenNotify(t *testing.T) *testnotify.Socket {
	t.Helper()
	s := testnotify.Listen(t)
	t.Setenv("NOTIFY_SOCKET", s.Path)
	return s
}

// next returns the lines of the next sd_notify message, failing the test
// when none arrives within within.
func next(t *testing.T, s *testnotify.Socket, within time.Duration) []string {
	t.Helper()
	n, ok := s.Receive(within)
	if !ok {
		t.Fatalf("no sd_notify message within %v", within)
	}
	return n.Lines
}

func has(msg []string, line string) bool {
	for _, l := range msg {
		if l == line {
			return true
		}
	}
	return false
}

// healthServer is a real DNS server on 127.0.0.1 (UDP and TCP on one port)
// that answers like a localdns listener's health-check zone: with CoreDNS's
// own whoami plugin. It can be stopped and started again on the same port.
type healthServer struct {
	addr netip.AddrPort
	hang atomic.Bool // when set, swallow queries (probe must time out)
	mu   sync.Mutex
	srvs []*dns.Server
}

func newHealthServer(t *testing.T) *healthServer {
	t.Helper()
	h := &healthServer{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	l, err := net.Listen("tcp", h.addr.String())
	if err != nil {
		pc.Close()
		t.Fatalf("tcp on the udp port: %v", err)
	}
	h.serve(pc, l)
	t.Cleanup(h.stop)
	return h
}

func (h *healthServer) handler() dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if h.hang.Load() {
			return
		}
		whoami.Whoami{}.ServeDNS(context.Background(), w, r)
	})
}

func (h *healthServer) serve(pc net.PacketConn, l net.Listener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h.handler()}, {Listener: l, Handler: h.handler()}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		h.srvs = append(h.srvs, s)
	}
}

func (h *healthServer) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.srvs {
		s.Shutdown()
	}
	h.srvs = nil
}

func (h *healthServer) restart(t *testing.T) {
	t.Helper()
	pc, err := net.ListenPacket("udp", h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", h.addr.String())
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	h.serve(pc, l)
}

// TestNotifySequence is the end-to-end check of the notify protocol as the
// daemon uses it: READY=1, probe-gated WATCHDOG=1 pings at a fifth of
// WATCHDOG_USEC, silence while the listener is down, pings again once it is
// back, STOPPING=1 last.
func TestNotifySequence(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "600000") // 600 ms: ping every 120 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	srv := newHealthServer(t)

	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}

	// The marks are written from the watchdog goroutine itself, right after
	// the tick: every datagram before a mark was sent before that tick ended.
	var armFailed, armRecovered atomic.Bool
	observe := func(r Result) {
		if r.ProbeErr != nil && r.Pinged {
			t.Errorf("pinged after a failed probe: %+v", r)
		}
		if r.ProbeErr != nil && armFailed.CompareAndSwap(true, false) {
			sock.Mark(t, "first-failure")
		}
		if r.ProbeErr == nil && armRecovered.CompareAndSwap(true, false) {
			sock.Mark(t, "recovered")
		}
	}

	if err := Ready("serving on " + srv.addr.String()); err != nil {
		t.Fatal(err)
	}
	msg := next(t, sock, time.Second)
	if !has(msg, "READY=1") || !has(msg, "STATUS=serving on "+srv.addr.String()) {
		t.Fatalf("first message = %q, want READY=1 with STATUS", msg)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunWatchdog(ctx, ListenerProbe(srv.addr), WithObserver(observe), WithMetrics(metrics))
	}()
	defer cancel()

	// Phase 1: healthy. Pings arrive, about 120 ms apart.
	const healthy = 5
	var stamps []time.Time
	for len(stamps) < healthy {
		msg := next(t, sock, time.Second)
		if !has(msg, "WATCHDOG=1") {
			t.Fatalf("healthy phase: unexpected message %q", msg)
		}
		stamps = append(stamps, time.Now())
	}
	avg := stamps[len(stamps)-1].Sub(stamps[0]) / time.Duration(len(stamps)-1)
	if avg < 90*time.Millisecond || avg > 400*time.Millisecond {
		t.Errorf("average ping interval %v, want about 120ms (a fifth of 600ms)", avg)
	}
	t.Logf("healthy: %d pings, average interval %v", len(stamps), avg)

	// Phase 2: the listener goes away. After the first failed probe, no
	// WATCHDOG=1 may arrive, for well over a whole WatchdogSec.
	armFailed.Store(true)
	srv.stop()
	for {
		msg := next(t, sock, 2*time.Second)
		if has(msg, "TEST_MARK=first-failure") {
			break
		}
		if !has(msg, "WATCHDOG=1") {
			t.Fatalf("before first failure: unexpected message %q", msg)
		}
	}
	failuresBefore := gatherFailures(t, reg)
	if msg, ok := sock.Receive(900 * time.Millisecond); ok {
		t.Fatalf("listener down, yet got %q", msg.Lines)
	}
	if got := gatherFailures(t, reg) - failuresBefore; got < 4 {
		t.Errorf("failures counted while down = %v, want >= 4 in 900ms at 120ms ticks", got)
	}

	// Phase 3: the listener is back: pings resume.
	armRecovered.Store(true)
	srv.restart(t)
	resumeStart := time.Now()
	if msg := next(t, sock, 2*time.Second); !has(msg, "WATCHDOG=1") {
		t.Fatalf("after recovery: first message %q, want WATCHDOG=1", msg)
	}
	t.Logf("first ping %v after the listener came back", time.Since(resumeStart))
	if msg := next(t, sock, time.Second); !has(msg, "TEST_MARK=recovered") {
		t.Fatalf("after recovery: %q, want the recovered mark", msg)
	}
	for range 2 {
		if msg := next(t, sock, time.Second); !has(msg, "WATCHDOG=1") {
			t.Fatalf("after recovery: %q, want WATCHDOG=1", msg)
		}
	}

	// Shutdown: stop the watchdog, then STOPPING=1, and nothing after it.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunWatchdog: %v", err)
	}
	if err := Stopping("draining"); err != nil {
		t.Fatal(err)
	}
	var last []string
	for {
		n, ok := sock.Receive(time.Second)
		if !ok {
			t.Fatalf("no STOPPING=1; last message %q", last)
		}
		msg := n.Lines
		last = msg
		if has(msg, "STOPPING=1") {
			if !has(msg, "STATUS=draining") {
				t.Errorf("STOPPING message %q lacks STATUS=draining", msg)
			}
			if extra, ok := sock.Receive(300 * time.Millisecond); ok {
				t.Fatalf("message after STOPPING=1: %q", extra.Lines)
			}
			checkHistogram(t, reg)
			return
		}
		if !has(msg, "WATCHDOG=1") {
			t.Fatalf("before STOPPING: unexpected %q", msg)
		}
	}
}

func gatherFailures(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "localdns_watchdog_probe_failures_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func checkHistogram(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var count uint64
	var failures float64
	for _, mf := range mfs {
		switch mf.GetName() {
		case "localdns_watchdog_probe_duration_seconds":
			count = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		case "localdns_watchdog_probe_failures_total":
			failures = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if count < 10 || failures < 4 || float64(count) <= failures {
		t.Errorf("metrics: %d probes observed, %v failures; want >= 10 probes, >= 4 failures, some successes", count, failures)
	}
	t.Logf("metrics: %d probes, %v failures", count, failures)
}

// TestWatchdogProbeTimeout: a listener that accepts queries but never answers
// (a wedged server) fails the probe at the probe timeout, well inside the
// interval, and is not pinged.
func TestWatchdogProbeTimeout(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "1000000") // 200 ms interval, 100 ms probe timeout
	t.Setenv("WATCHDOG_PID", "")
	srv := newHealthServer(t)
	srv.hang.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan Result, 16)
	done := make(chan error, 1)
	go func() {
		done <- RunWatchdog(ctx, ListenerProbe(srv.addr), WithObserver(func(r Result) { results <- r }))
	}()
	for range 3 {
		r := <-results
		if r.ProbeErr == nil || r.Pinged {
			t.Fatalf("wedged listener: %+v, want a failed probe and no ping", r)
		}
		if r.Latency < 90*time.Millisecond || r.Latency > time.Second {
			t.Errorf("probe latency %v, want the 100ms probe timeout (not the client default of 2s)", r.Latency)
		}
	}
	srv.hang.Store(false)
	r := <-results
	if r.ProbeErr != nil || !r.Pinged {
		t.Fatalf("answering again: %+v, want a ping", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var pings int
	for {
		n, ok := sock.Receive(100 * time.Millisecond)
		if !ok {
			break
		}
		if !has(n.Lines, "WATCHDOG=1") {
			t.Fatalf("unexpected %q", n.Lines)
		}
		pings++
	}
	if pings != 1 {
		t.Errorf("%d pings, want exactly 1 (only the one passing probe)", pings)
	}
}

// TestNoSystemd: outside systemd everything is a quiet no-op; the watchdog
// returns at once and never probes.
func TestNoSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "600000")
	os.Unsetenv("NOTIFY_SOCKET")
	if Enabled() {
		t.Fatal("Enabled without NOTIFY_SOCKET")
	}
	for name, f := range map[string]func() error{
		"Ready":     func() error { return Ready("x") },
		"Status":    func() error { return Status("x") },
		"Reloading": Reloading,
		"Stopping":  func() error { return Stopping("x") },
		"Watchdog":  Watchdog,
	} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v", name, err)
		}
	}
	probed := false
	err := RunWatchdog(context.Background(), func(context.Context) error { probed = true; return nil })
	if err != nil || probed {
		t.Fatalf("RunWatchdog without NOTIFY_SOCKET: err=%v probed=%v, want nil and no probe", err, probed)
	}
}

// TestWatchdogNotOurs: a notify socket but no watchdog for this process
// (WatchdogSec unset, or WATCHDOG_PID naming the parent) means no pings.
func TestWatchdogNotOurs(t *testing.T) {
	listenNotify(t)
	for _, env := range []struct{ usec, pid string }{
		{"", ""},
		{"600000", strconv.Itoa(os.Getppid())},
	} {
		t.Setenv("WATCHDOG_USEC", env.usec)
		t.Setenv("WATCHDOG_PID", env.pid)
		probed := false
		err := RunWatchdog(context.Background(), func(context.Context) error { probed = true; return nil })
		if err != nil || probed {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: err=%v probed=%v, want nil and no probe", env.usec, env.pid, err, probed)
		}
	}
	t.Setenv("WATCHDOG_USEC", "soon")
	t.Setenv("WATCHDOG_PID", "")
	if err := RunWatchdog(context.Background(), func(context.Context) error { return nil }); err == nil {
		t.Error("malformed WATCHDOG_USEC accepted")
	}
}

func TestMessages(t *testing.T) {
	sock := listenNotify(t)
	for _, tc := range []struct {
		send func() error
		want []string
	}{
		{func() error { return Status("2 listeners, cache 12034 entries") }, []string{"STATUS=2 listeners, cache 12034 entries"}},
		// A multi-line status must not smuggle a second assignment.
		{func() error { return Status("upstream error\nREADY=1") }, []string{"STATUS=upstream error READY=1"}},
		{func() error { return Stopping("") }, []string{"STOPPING=1"}},
	} {
		if err := tc.send(); err != nil {
			t.Fatal(err)
		}
		got := next(t, sock, time.Second)
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	got := next(t, sock, time.Second)
	if len(got) != 2 || got[0] != "RELOADING=1" || !strings.HasPrefix(got[1], "MONOTONIC_USEC=") {
		t.Errorf("reloading = %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	if usec, err := strconv.ParseInt(strings.TrimPrefix(got[1], "MONOTONIC_USEC="), 10, 64); err != nil || usec <= 0 {
		t.Errorf("MONOTONIC_USEC %q: %v", got[1], err)
	}

	// A socket that is gone is an error the caller sees.
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent.sock"))
	if err := Ready(""); err == nil {
		t.Error("Ready to a missing socket: no error")
	}
}

func TestIntervals(t *testing.T) {
	for _, tc := range []struct{ wd, interval, timeout time.Duration }{
		{30 * time.Second, 6 * time.Second, 2 * time.Second},
		{60 * time.Second, 12 * time.Second, 2 * time.Second},
		{600 * time.Millisecond, 120 * time.Millisecond, 60 * time.Millisecond},
	} {
		i, to := Intervals(tc.wd)
		if i != tc.interval || to != tc.timeout {
			t.Errorf("Intervals(%v) = %v, %v; want %v, %v", tc.wd, i, to, tc.interval, tc.timeout)
		}
	}
}

func TestProbe(t *testing.T) {
	srv := newHealthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		if err := Probe(ctx, srv.addr, network); err != nil {
			t.Errorf("whoami over %s: %v", network, err)
		}
	}
	if err := Probe(ctx, srv.addr, "sctp"); err == nil {
		t.Error("sctp accepted")
	}

	// Servers that answer, but not with a health-check answer.
	for name, h := range map[string]dns.HandlerFunc{
		"nxdomain": func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeNameError)
			w.WriteMsg(m)
		},
		"servfail": func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			w.WriteMsg(m)
		},
		"nodata": func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			w.WriteMsg(m)
		},
	} {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := &dns.Server{PacketConn: pc, Handler: h}
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		err = Probe(ctx, pc.LocalAddr().(*net.UDPAddr).AddrPort(), "udp")
		s.Shutdown()
		if err == nil {
			t.Errorf("%s: probe passed", name)
		}
	}

	// ListenerProbe: one dead listener among live ones fails the probe and
	// names it.
	dead := newHealthServer(t)
	dead.stop()
	err := ListenerProbe(srv.addr, dead.addr)(ctx)
	if err == nil || !strings.Contains(err.Error(), dead.addr.String()) || strings.Contains(err.Error(), srv.addr.String()) {
		t.Errorf("ListenerProbe(live, dead) = %v, want an error naming only %s", err, dead.addr)
	}
	if err := ListenerProbe(srv.addr)(ctx); err != nil {
		t.Errorf("ListenerProbe(live) = %v", err)
	}
	if err := ListenerProbe()(ctx); err == nil {
		t.Error("ListenerProbe() with no listeners passed")
	}
}
