package topo

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// inNetns runs f on a thread switched into the named namespace; sockets f
// opens stay in that namespace.
func inNetns(t *testing.T, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	f()
}

// listenUDP opens a UDP socket on addr inside netns.
func listenUDP(t *testing.T, ns, addr string) net.PacketConn {
	var pc net.PacketConn
	var err error
	inNetns(t, ns, func() { pc, err = net.ListenPacket("udp", addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// echo answers every datagram on pc with its payload.
func echo(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}

// roundTrip sends one datagram from a fresh socket in ns to addr and
// reports whether the echo came back.
func roundTrip(t *testing.T, ns, addr string) bool {
	var c net.Conn
	var err error
	inNetns(t, ns, func() { c, err = net.Dial("udp", addr) })
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return false
	}
	_, err = c.Read(make([]byte, 16))
	return err == nil
}

func TestBuildAndTeardown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	lock, err := Lock()
	if err != nil {
		t.Skipf("a lab is running: %v", err)
	}
	defer lock.Close()
	if left, err := Leftovers(); err != nil || len(left) > 0 {
		t.Skipf("lab namespaces exist (a lab is running?): %v %v", left, err)
	}
	t.Cleanup(func() {
		if err := Teardown(); err != nil {
			t.Error(err)
		}
		if left, _ := Leftovers(); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	if err := Build(true); err != nil {
		t.Fatal(err)
	}

	// Both endpoints count what the service address sends them.
	counts := make(chan int, 1000)
	for i, p := range CoreDNSPods {
		pc := listenUDP(t, p.Netns, p.Addr+":53")
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				counts <- i
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	go echo(listenUDP(t, AzureDNS, AzureDNSIP+":53"))
	go echo(listenUDP(t, Node, ClusterListener+":53"))

	// A fresh socket is a new flow, so the random DNAT spreads them; the
	// node's own traffic goes through the same rules.
	per := map[int]int{}
	for _, ns := range []string{Pod1, Pod2, Node} {
		for range 20 {
			if !roundTrip(t, ns, ServiceIP+":53") {
				t.Fatalf("%s: no answer through the service address", ns)
			}
			per[<-counts]++
		}
	}
	if per[0] < 10 || per[1] < 10 {
		t.Errorf("60 flows split %d/%d between the endpoints: not random per flow", per[0], per[1])
	}
	for _, c := range [][2]string{{Pod1, AzureDNSIP}, {CoreDNSA, AzureDNSIP}, {Pod2, ClusterListener}} {
		if !roundTrip(t, c[0], c[1]+":53") {
			t.Errorf("%s cannot reach %s", c[0], c[1])
		}
	}
	out, err := exec.Command("ip", "netns", "exec", Node, "nft", "list", "table", "ip", "ldlab-kubeproxy").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "numgen random mod 2") {
		t.Errorf("service rules: %v\n%s", err, out)
	}

	if err := CutUpstreams(); err != nil {
		t.Fatal(err)
	}
	if roundTrip(t, Pod1, AzureDNSIP+":53") || roundTrip(t, Node, ServiceIP+":53") {
		t.Error("upstreams reachable while cut")
	}
	if !roundTrip(t, Pod1, ClusterListener+":53") {
		t.Error("cut also took the listener away")
	}
	if err := RestoreUpstreams(); err != nil {
		t.Fatal(err)
	}
	if !roundTrip(t, Node, AzureDNSIP+":53") {
		t.Error("external resolver unreachable after restore")
	}
}
