package node

import (
	"context"
	"fmt"
	"net"
	"os"
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

// exitListen is daemon.ExitListen: a listener could not bind.
const exitListen = 6

// TestModesWithPortTaken starts localdns on a node where something else
// already serves 169.254.10.11:53 (its address added by hand, its UDP port
// bound). Preferred exits 0 and Required exits 6 (ExitListen); both leave
// the node exactly as they found it: no table, the address localdns added
// removed, and the address it did not add left alone.
func TestModesWithPortTaken(t *testing.T) {
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	holdAddr(t, node, clusterListener)
	udpIn(t, node, clusterListener+":53")
	before := nodeState(t, node)

	for _, c := range []struct {
		mode string
		code int
	}{{"Preferred", 0}, {"Required", exitListen}} {
		t.Run(c.mode, func(t *testing.T) {
			prof := newProfile(t, up)
			prof.Mode = c.mode
			code, p := runToExit(t, node, prof.write(t), 20*time.Second)
			if code != c.code {
				t.Errorf("mode %s with %s:53 taken exited %d, want %d; log:\n%s", c.mode, clusterListener, code, c.code, p.Log())
			}
			if hasTable(t, node) {
				t.Errorf("mode %s left the table inet localdns behind", c.mode)
			}
			if got := listenerAddrs(t, node); got[clusterListener] != 1 || got[nodeListener] != 0 {
				t.Errorf("mode %s: listener addresses %v, want only %s (not ours) left", c.mode, got, clusterListener)
			}
			if after := nodeState(t, node); after != before {
				t.Errorf("mode %s changed the node:\n%s\nbefore:\n%s", c.mode, after, before)
			}
			if _, err := os.Stat(filepath.Join(prof.Dir, "run", "netsetup.json")); !os.IsNotExist(err) {
				t.Errorf("mode %s left its state file (stat: %v)", c.mode, err)
			}
			if !strings.Contains(p.Log(), "address already in use") {
				t.Errorf("mode %s: log does not name the cause (address already in use):\n%s", c.mode, p.Log())
			}
		})
	}
}

// TestModeDisabledTearsDown runs localdns, kills it with SIGKILL so that
// addresses and rules stay behind, and then runs it with mode: Disabled,
// which must remove them and exit 0; a second Disabled run on the clean node
// changes nothing.
func TestModeDisabledTearsDown(t *testing.T) {
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	before := nodeState(t, node)
	prof := newProfile(t, up)

	d := startRun(t, node, prof.write(t), runOpts{})
	waitServing(t, node, d)
	d.signal(t, syscall.SIGKILL)
	if _, ok := d.wait(5 * time.Second); !ok {
		t.Fatal("localdns did not die on SIGKILL")
	}
	if !hasTable(t, node) || listenerAddrs(t, node)[clusterListener] != 1 {
		t.Fatal("expected the SIGKILLed localdns to leave its table and addresses behind")
	}

	prof.Mode = "Disabled"
	cfg := prof.write(t)
	for i := 1; i <= 2; i++ {
		code, p := runToExit(t, node, cfg, 10*time.Second)
		if code != 0 {
			t.Errorf("Disabled run #%d exited %d, want 0; log:\n%s", i, code, p.Log())
		}
		if after := nodeState(t, node); after != before {
			t.Errorf("node after Disabled run #%d differs from before localdns ran:\n%s\nbefore:\n%s", i, after, before)
		}
		if i == 1 {
			t.Logf("Disabled run: %s", strings.TrimSpace(lastLine(p.Log())))
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

var restoredRE = regexp.MustCompile(`Restored (\d+) cache entries`)

// TestFailedStartKeepsCacheSnapshot: a start that fails (port taken, exit 6,
// which systemd answers with Restart=on-failure) must not replace the cache
// snapshot of the last good run, or the next good start begins cold.
func TestFailedStartKeepsCacheSnapshot(t *testing.T) {
	const names = 50
	node := newNS(t, "node")
	up := startUpstreams(t, node)
	prof := newProfile(t, up)
	cfg := prof.write(t)

	d := startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	for i := range names {
		name := fmt.Sprintf("warm%d.example.org.", i)
		if r, err := exchange(t, node, "udp", clusterListener+":53", name, dns.TypeA, 2*time.Second); err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s: %v %v", name, r, err)
		}
	}
	d.stop(t)
	snap := filepath.Join(prof.Dir, "cache.snapshot")
	good, err := os.Stat(snap)
	if err != nil {
		t.Fatalf("no snapshot after a clean stop: %v", err)
	}

	// Port taken: a socket bound with IP_FREEBIND, so localdns still adds
	// the address itself and then fails to bind.
	blocker := listenIn(t, node, func() (any, error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1) }); err != nil {
				return err
			}
			return serr
		}}
		return lc.ListenPacket(context.Background(), "udp4", clusterListener+":53")
	}).(net.PacketConn)
	code, p := runToExit(t, node, cfg, 20*time.Second)
	if code != exitListen {
		t.Fatalf("start with the port taken exited %d, want %d; log:\n%s", code, exitListen, p.Log())
	}
	blocker.Close()
	after, err := os.Stat(snap)
	if err != nil {
		t.Fatalf("snapshot gone after a failed start: %v", err)
	}
	t.Logf("snapshot: %d bytes after the good run, %d bytes after the failed start", good.Size(), after.Size())

	d = startRun(t, node, cfg, runOpts{})
	waitServing(t, node, d)
	m := restoredRE.FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("no restore logged; log:\n%s", d.Log())
	}
	if n, _ := strconv.Atoi(m[1]); n < names {
		t.Errorf("the start after a failed one restored %d cache entries, the last good run had at least %d (snapshot %d bytes, then %d)", n, names, good.Size(), after.Size())
	}
	if r, err := exchange(t, node, "udp", clusterListener+":53", "warm7.example.org.", dns.TypeA, 2*time.Second); err != nil || len(r.Answer) != 1 {
		t.Fatalf("warm7: %v %v", r, err)
	}
	if n := up.cluster.Count("warm7.example.org."); n != 1 {
		t.Errorf("warm7.example.org. reached the upstream %d times in all, want once (before the failed start)", n)
	}
}
