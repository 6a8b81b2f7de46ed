package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

// stopProfile is a loopback profile with its own upstreams and a snapshot,
// so a stop runs every step: drain, snapshot, servers' shutdown.
const stopProfile = `listeners: {node: 127.0.22.1, cluster: 127.0.22.2}
port: %d
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: false}
metrics: 127.0.0.1:%d
health: 127.0.0.1:%d
cache: {snapshot: %s}
`

func writeStopProfile(t *testing.T, up string) (profile, node string) {
	t.Helper()
	ports := testbin.FreePorts(t, 3, "127.0.22.1", "127.0.22.2", "127.0.0.1")
	dir := t.TempDir()
	profile = filepath.Join(dir, "localdns.yaml")
	text := fmt.Sprintf(stopProfile, ports[0], up, up, ports[1], ports[2], filepath.Join(dir, "cache.snapshot"))
	if err := os.WriteFile(profile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return profile, fmt.Sprintf("127.0.22.1:%d", ports[0])
}

// waitExit waits up to limit for cmd to exit and returns how long it took
// from since; on timeout it kills the process and reports ok false.
func waitExit(cmd *exec.Cmd, since time.Time, limit time.Duration) (took time.Duration, err error, ok bool) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return time.Since(since), err, true
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		return limit, nil, false
	}
}

// TestStopDuringStartup sends SIGTERM at every moment of start-up, from
// before the profile is read to after the servers answer: each time the
// process must exit cleanly within 2 s. (It used to hang for good when the
// signal came while the servers were being spawned: the stop waited for
// servers that had not registered yet and so were never stopped.)
func TestStopDuringStartup(t *testing.T) {
	up := testdns.Start(t, "192.0.2.30")
	profile, _ := writeStopProfile(t, up.Addr)
	var took []time.Duration
	for delay := time.Duration(0); delay <= 200*time.Millisecond; delay += 5 * time.Millisecond {
		var log testbin.Log
		cmd := exec.Command(binary, "run", "--config", profile)
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		sent := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("delay %s: SIGTERM: %v", delay, err)
		}
		d, err, ok := waitExit(cmd, sent, 2*time.Second)
		if !ok {
			t.Fatalf("SIGTERM %s after start: still running 2 s later (killed); log:\n%s", delay, log.String())
		}
		// Exit 0 after a clean stop; killed by the signal itself when it
		// came before the handler was installed.
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM) {
			t.Fatalf("SIGTERM %s after start: %v; log:\n%s", delay, err, log.String())
		}
		took = append(took, d)
	}
	slices.Sort(took)
	t.Logf("%d stops during start-up: exit after SIGTERM min %s, median %s, max %s",
		len(took), took[0], took[len(took)/2], took[len(took)-1])
}

// TestSecondSignalEndsASlowStop: a stop that waits for a query in flight to
// a silent upstream is cut short by a second SIGTERM, with a log line that
// says the stop did not finish, instead of the signal being swallowed.
func TestSecondSignalEndsASlowStop(t *testing.T) {
	up := testdns.Start(t, "192.0.2.31")
	profile, node := writeStopProfile(t, up.Addr)
	d := startDaemon(t, node, "--config", profile)
	up.Set(testdns.Silent)
	// Queries in flight: each waits for the silent upstream, so the
	// servers' shutdown waits for them.
	for i := range 4 {
		go func() {
			c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("slow%d.example.", i), dns.TypeA)
			c.Exchange(m, node)
		}()
	}
	// By name: the upstream's total counts health probes too, which
	// would let the stop begin before the queries are in flight.
	waitFor(t, func() bool {
		for i := range 4 {
			if up.Count(fmt.Sprintf("slow%d.example.", i)) == 0 {
				return false
			}
		}
		return true
	}, "queries in flight at the upstream")
	d.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, func() bool { return strings.Contains(d.Log(), "msg=stopping") }, "the stop to begin")
	sent := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	took, _, ok := waitExit(d.cmd, sent, 2*time.Second)
	if !ok {
		t.Fatalf("a second SIGTERM during the stop did not end the process within 2 s; log:\n%s", d.Log())
	}
	if !strings.Contains(d.Log(), "second signal during the stop") {
		t.Errorf("log does not say the stop was cut short:\n%s", d.Log())
	}
	t.Logf("exited %s after the second SIGTERM", took.Round(time.Millisecond))
}

// TestSecondInstanceDoesNotWriteTheSnapshot: a second `localdns run` on the
// same profile cannot bind and stops; it must leave the snapshot to the
// running instance (it used to write its own, empty cache over it on the
// way out).
func TestSecondInstanceDoesNotWriteTheSnapshot(t *testing.T) {
	up := testdns.Start(t, "192.0.2.32")
	profile, node := writeStopProfile(t, up.Addr)
	snapshot := filepath.Join(filepath.Dir(profile), "cache.snapshot")
	first := startDaemon(t, node, "--config", profile)
	testdns.Query(t, "udp", node, "kept.example.", dns.TypeA)

	var log testbin.Log
	second := exec.Command(binary, "run", "--config", profile)
	second.Stdout, second.Stderr = &log, &log
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := waitExit(second, time.Now(), 10*time.Second); !ok {
		t.Fatalf("second instance still running; log:\n%s", log.String())
	}
	if !strings.Contains(log.String(), "Not writing the cache snapshot") || !strings.Contains(log.String(), fmt.Sprintf("process %d holds its lock", first.cmd.Process.Pid)) {
		t.Errorf("second instance does not say it leaves the snapshot to the first; log:\n%s", log.String())
	}
	if _, err := os.Stat(snapshot); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the second instance wrote the snapshot (err %v); log:\n%s", err, log.String())
	}

	first.cmd.Process.Signal(syscall.SIGTERM)
	if _, _, ok := waitExit(first.cmd, time.Now(), 10*time.Second); !ok {
		t.Fatal("first instance did not stop")
	}
	if !strings.Contains(first.Log(), "Saved ") || strings.Contains(first.Log(), "Saved 0 ") {
		t.Errorf("the first instance did not write its snapshot at stop; log:\n%s", first.Log())
	}
}
