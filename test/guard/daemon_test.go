// Package guard is a standing guard against regressions that unit tests
// miss: a differential test that sends the same queries through localdns
// and through stock CoreDNS with AKS LocalDNS's Corefile and compares the
// answers, and a packet-level fuzz run against the running binary. See
// README.md.
package guard

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

var localdnsBin string

func TestMain(m *testing.M) { testbin.Main(m, &localdnsBin) }

// daemon is a running `localdns run` process.
type daemon struct {
	cmd    *exec.Cmd
	log    testbin.Log
	exited chan struct{} // closed once the process has exited
	node   string        // node listener ip:port
	pods   string        // cluster listener ip:port
}

// profileText is a loopback-only profile: both upstream lists point at
// the test's own server, nothing on the machine is changed.
const profileText = `# guard test profile: loopback listeners and upstreams, no network changes.
listeners: {node: %s, cluster: %s}
port: %d
readyPort: %d
clusterDNS: [%s]
vnetDNS: [%s]
network: {manage: false}
metrics: 127.0.0.1:%d
health: 127.0.0.1:%d
cache: {snapshot: %q, maxMemory: 32Mi}
`

// startLocaldns writes a profile whose clusterDNS and vnetDNS are upstream
// and runs localdns on it, on listeners nodeIP and podsIP, until the test
// ends. extra is appended to the profile.
func startLocaldns(t *testing.T, nodeIP, podsIP, upstream, snapshot, extra string) *daemon {
	t.Helper()
	ports := testbin.FreePorts(t, 4, nodeIP, podsIP, "127.0.0.1")
	profile := filepath.Join(t.TempDir(), "localdns.yaml")
	text := fmt.Sprintf(profileText, nodeIP, podsIP, ports[0], ports[1], upstream, upstream, ports[2], ports[3], snapshot) + extra
	if err := os.WriteFile(profile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		node: fmt.Sprintf("%s:%d", nodeIP, ports[0]),
		pods: fmt.Sprintf("%s:%d", podsIP, ports[0]),
	}
	d.cmd = exec.Command(localdnsBin, "run", "--config", profile)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan struct{})
	exited := d.exited
	go func() { d.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-exited
			t.Errorf("localdns did not stop on SIGTERM within 10s")
		}
		if t.Failed() {
			t.Logf("localdns log:\n%s", d.log.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for _, l := range []string{d.node, d.pods} {
		for {
			if _, err := testdns.Exchange("udp", l, "health-check.localdns.local.", dns.TypeA); err == nil {
				break
			}
			select {
			case <-exited:
				t.Fatalf("localdns exited: %v; log:\n%s", d.cmd.ProcessState, d.log.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("localdns did not answer on %s within 15s; log:\n%s", l, d.log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return d
}

// alive says whether the process still runs.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// rss returns the process's resident set size in bytes.
func (d *daemon) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read localdns status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}
