package netsetup

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var nsSeq atomic.Int32

// requireRoot skips tests that create network namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces, links and nftables tables")
	}
}

// newNS creates a named network namespace (so that `ip netns exec` reaches it
// too) with lo up, as on any host, and removes it when the test ends. The
// calling thread's namespace is left as it was.
func newNS(t *testing.T) (netns.NsHandle, string) {
	t.Helper()
	requireRoot(t)
	name := fmt.Sprintf("ldns-test-%d-%d", os.Getpid(), nsSeq.Add(1))

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	ns, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		// This thread is in the wrong namespace: leave it locked, so that
		// the runtime discards it when this goroutine ends.
		t.Fatalf("restoring netns: %v", err)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if nerr != nil {
		t.Fatalf("creating netns %s: %v", name, nerr)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns, name
}

// inNS runs a command inside the named namespace and returns its output.
func inNS(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// withNS runs f on a thread that is in namespace ns; sockets f creates stay
// in ns.
func withNS(t *testing.T, ns netns.NsHandle, f func() error) error {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("restoring netns: %v", err) // thread stays locked and is discarded
	}
	runtime.UnlockOSThread()
	return ferr
}

// listenUDPIn opens a UDP socket bound to addr inside ns.
func listenUDPIn(t *testing.T, ns netns.NsHandle, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := withNS(t, ns, func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listening on %s in netns: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// execIn runs a command inside the named namespace with stdin.
func execIn(name, stdin string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
