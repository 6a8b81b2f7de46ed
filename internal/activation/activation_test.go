package activation

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run this test binary again as a socket-activated child: the
// parent creates real sockets, passes them as fds 3.. exactly as systemd does
// (LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID = the child's own pid, which a
// /bin/sh wrapper sets with `LISTEN_PID=$$; exec ...` so the child's code
// sees a genuine pid match), and the child runs Inherited/Take/Release, prints
// what it got as JSON, then answers one request on every socket it took, so
// the parent can check the child really holds the socket bound to each
// address.
const (
	childEnv = "LOCALDNS_ACTIVATION_TEST_CHILD"
	takeEnv  = "LOCALDNS_ACTIVATION_TEST_TAKE"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

type taken struct {
	Asked      string
	UDP, TCP   string // local address of what Take returned, "" for nil
	OK         bool
	SecondTake bool // ok of a second Take of the same address (must be false)
}

type childReport struct {
	Err      string
	EnvLeft  []string // LISTEN_* still set after Inherited
	Taken    []taken
	LenAfter int
	Released []Socket
}

func child() int {
	var rep childReport
	set, err := Inherited()
	if err != nil {
		rep.Err = err.Error()
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(k); ok {
			rep.EnvLeft = append(rep.EnvLeft, k+"="+v)
		}
	}
	var conns []any
	for _, a := range strings.Split(os.Getenv(takeEnv), ",") {
		if a == "" {
			continue
		}
		addr := netip.MustParseAddrPort(a)
		udp, tcp, ok := set.Take(addr)
		tk := taken{Asked: a, OK: ok}
		if udp != nil {
			tk.UDP = udp.LocalAddr().String()
			conns = append(conns, udp)
		}
		if tcp != nil {
			tk.TCP = tcp.Addr().String()
			conns = append(conns, tcp)
		}
		_, _, tk.SecondTake = set.Take(addr)
		rep.Taken = append(rep.Taken, tk)
	}
	rep.LenAfter = set.Len()
	rep.Released = set.Release()
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	// Answer one request per taken socket, tagged with the socket's kind
	// and address.
	var wg sync.WaitGroup
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range conns {
		wg.Go(func() {
			switch c := c.(type) {
			case net.PacketConn:
				defer c.Close()
				c.SetDeadline(deadline)
				buf := make([]byte, 512)
				_, from, err := c.ReadFrom(buf)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child udp:", err)
					return
				}
				c.WriteTo([]byte("udp "+c.LocalAddr().String()), from)
			case net.Listener:
				defer c.Close()
				c.(*net.TCPListener).SetDeadline(deadline)
				conn, err := c.Accept()
				if err != nil {
					fmt.Fprintln(os.Stderr, "child tcp:", err)
					return
				}
				conn.Write([]byte("tcp " + c.Addr().String()))
				conn.Close()
			}
		})
	}
	wg.Wait()
	return 0
}

// pair binds a UDP socket and a TCP listener on the same ip:port.
func pair(t *testing.T, ip string) (*net.UDPConn, *net.TCPListener, netip.AddrPort) {
	t.Helper()
	for range 20 {
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		addr := u.LocalAddr().(*net.UDPAddr).AddrPort()
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
		if err != nil {
			u.Close() // port taken for TCP: try another
			continue
		}
		t.Cleanup(func() { u.Close(); l.Close() })
		return u, l, addr
	}
	t.Fatal("no port free for both udp and tcp")
	return nil, nil, netip.AddrPort{}
}

type fileConn interface{ File() (*os.File, error) }

func fileOf(t *testing.T, c fileConn) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// startChild runs the test binary as the activated child behind argv (a
// wrapper that ends by exec'ing the binary), with files as fds 3...
func startChild(t *testing.T, argv []string, env []string, files []*os.File) (*exec.Cmd, childReport, *strings.Builder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	stderr := new(strings.Builder)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, readReport(t, out, stderr), stderr
}

func readReport(t *testing.T, out io.Reader, stderr *strings.Builder) childReport {
	t.Helper()
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil {
		t.Fatalf("child report: %v; stderr:\n%s", err, stderr)
	}
	var rep childReport
	if err := json.Unmarshal(line, &rep); err != nil {
		t.Fatalf("child report %q: %v", line, err)
	}
	return rep
}

// withListenPID is a wrapper that sets LISTEN_PID to the pid the test binary
// will have: sh's own, kept across exec.
func withListenPID(extra ...string) []string {
	return append([]string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$@"`, "sh"}, extra...)
}

func self() []string { return []string{os.Args[0], "-test.run=^$"} }

// exchange sends one request to addr over network and returns the reply.
func exchange(t *testing.T, network string, addr netip.AddrPort) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", network, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if network == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%s %s: %v", network, addr, err)
		}
		return string(buf[:n])
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("%s %s: %v", network, addr, err)
	}
	return string(b)
}

// checkTaken: each wanted address got both of its sockets, once; left is how
// many usable sockets must remain untaken.
func checkTaken(t *testing.T, rep childReport, left int, want ...netip.AddrPort) {
	t.Helper()
	if rep.Err != "" {
		t.Fatalf("Inherited: %s", rep.Err)
	}
	if len(rep.EnvLeft) > 0 {
		t.Errorf("LISTEN_* still set after Inherited: %v", rep.EnvLeft)
	}
	if len(rep.Taken) != len(want) {
		t.Fatalf("took %d addresses, want %d: %+v", len(rep.Taken), len(want), rep.Taken)
	}
	for i, a := range want {
		tk := rep.Taken[i]
		if !tk.OK || tk.UDP != a.String() || tk.TCP != a.String() {
			t.Errorf("Take(%s) = udp %q tcp %q ok %v; want both bound to %s", tk.Asked, tk.UDP, tk.TCP, tk.OK, a)
		}
		if tk.SecondTake {
			t.Errorf("Take(%s) a second time found sockets again", tk.Asked)
		}
	}
	if rep.LenAfter != left {
		t.Errorf("Len after taking = %d, want %d", rep.LenAfter, left)
	}
}

// TestInheritedMatchesByAddress: two listener addresses, their UDP and TCP
// sockets passed in mixed order with misleading FileDescriptorNames, plus
// strays (a UDP socket for an address nobody asks for, a unix socket, a
// connected TCP socket, /dev/null, a second copy of a UDP socket). Each listener must get exactly its own
// two sockets, and every stray must be reported.
func TestInheritedMatchesByAddress(t *testing.T) {
	udpA, tcpA, addrA := pair(t, "127.0.0.1")
	udpB, tcpB, addrB := pair(t, "127.0.0.2")
	strayUDP, _, strayAddr := pair(t, "127.0.0.3")

	unixL, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "stray.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer unixL.Close()
	// A connected (not listening) TCP socket, to a listener of its own.
	_, side, _ := pair(t, "127.0.0.3")
	connected, err := net.DialTCP("tcp", nil, side.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer connected.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()

	files := []*os.File{
		fileOf(t, tcpB), fileOf(t, udpA), fileOf(t, strayUDP), fileOf(t, tcpA),
		devnull, fileOf(t, udpB), fileOf(t, unixL), fileOf(t, connected),
		fileOf(t, udpA), // the same socket twice (two units naming one address)
	}
	// Names that lie about what the sockets are: matching must ignore them.
	names := []string{"node-udp", "cluster-tcp", "cluster-udp", "node-tcp", "dev", "node-udp-2", "unix", "conn", "dup"}
	env := []string{
		childEnv + "=1",
		// B asked for in its IPv4-mapped form: must match the IPv4 socket.
		takeEnv + "=" + addrA.String() + "," + netip.AddrPortFrom(netip.AddrFrom16(addrB.Addr().As16()), addrB.Port()).String(),
		"LISTEN_FDS=" + strconv.Itoa(len(files)),
		"LISTEN_FDNAMES=" + strings.Join(names, ":"),
	}
	_, rep, _ := startChild(t, withListenPID(self()...), env, files)
	checkTaken(t, rep, 1, addrA, addrB)

	wantReleased := map[string]string{ // name -> reason fragment
		"cluster-udp": "no listener for this address",
		"dev":         "not a socket",
		"unix":        "not an IP socket",
		"conn":        "not listening",
		"dup":         "second udp socket for the address; using cluster-tcp",
	}
	if len(rep.Released) != len(wantReleased) {
		t.Errorf("released %d sockets, want %d: %v", len(rep.Released), len(wantReleased), rep.Released)
	}
	for _, s := range rep.Released {
		frag, ok := wantReleased[s.Name]
		if !ok || !strings.Contains(s.Reason, frag) {
			t.Errorf("released %s; want reason containing %q", s, frag)
		}
		if s.Name == "cluster-udp" && (s.Kind != "udp" || s.Addr != strayAddr.String()) {
			t.Errorf("stray udp reported as %s, want udp %s", s, strayAddr)
		}
		t.Logf("reported: %s", s)
	}

	// The child really serves each address on the socket bound to it.
	for _, a := range []netip.AddrPort{addrA, addrB} {
		for _, network := range []string{"udp", "tcp"} {
			if got, want := exchange(t, network, a), network+" "+a.String(); got != want {
				t.Errorf("%s %s answered %q, want %q", network, a, got, want)
			}
		}
	}
}

// TestInheritedOtherPID: LISTEN_* meant for another process (our parent
// forgot to unset them) must not make us grab fds 3..; the variables are
// still removed.
func TestInheritedOtherPID(t *testing.T) {
	udpA, _, addrA := pair(t, "127.0.0.1")
	env := []string{
		childEnv + "=1",
		takeEnv + "=" + addrA.String(),
		"LISTEN_FDS=1",
		"LISTEN_PID=1",
	}
	_, rep, _ := startChild(t, self(), env, []*os.File{fileOf(t, udpA)})
	if rep.Err != "" || len(rep.EnvLeft) > 0 {
		t.Fatalf("err %q, env left %v", rep.Err, rep.EnvLeft)
	}
	if rep.Taken[0].OK || len(rep.Released) != 0 {
		t.Errorf("LISTEN_PID of another process: took %+v, released %v; want nothing", rep.Taken, rep.Released)
	}
}

// TestNoActivation: run by hand, nothing is inherited and nothing breaks.
func TestNoActivation(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	os.Unsetenv("LISTEN_PID")
	set, err := Inherited()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := set.Take(netip.MustParseAddrPort("169.254.10.10:53")); ok || set.Len() != 0 || len(set.Release()) != 0 {
		t.Error("empty activation produced sockets")
	}
	var zero Set
	if _, _, ok := zero.Take(netip.MustParseAddrPort("169.254.10.10:53")); ok || len(zero.Release()) != 0 {
		t.Error("zero Set produced sockets")
	}
}

// TestSystemdSocketActivate uses systemd's own activator,
// systemd-socket-activate, which sets LISTEN_PID itself and passes through
// fds it inherited: the parent hands it the two UDP sockets, it opens the two
// TCP listeners (in the opposite address order) and execs the child on the
// first connection.
func TestSystemdSocketActivate(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (Debian package systemd)")
	}
	udpA, tcpA, addrA := pair(t, "127.0.0.1")
	udpB, tcpB, addrB := pair(t, "127.0.0.2")
	// systemd-socket-activate binds the TCP side itself.
	tcpA.Close()
	tcpB.Close()

	argv := withListenPID(activate,
		"-l", addrB.String(), "-l", addrA.String(),
		"-E", childEnv+"=1",
		"-E", takeEnv+"="+addrA.String()+","+addrB.String(),
	)
	argv = append(argv, self()...)
	env := []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=a:b"}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = []*os.File{fileOf(t, udpB), fileOf(t, udpA)}
	stderr := new(strings.Builder)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	// The first connection makes systemd-socket-activate exec the child;
	// the child then accepts it from the very listener it was queued on.
	var trigger net.Conn
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if trigger, err = net.Dial("tcp", addrA.String()); err == nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("systemd-socket-activate did not listen on %s: %v; stderr:\n%s", addrA, err, stderr)
		}
	}
	defer trigger.Close()
	rep := readReport(t, out, stderr)
	checkTaken(t, rep, 0, addrA, addrB)
	if len(rep.Released) != 0 {
		t.Errorf("unexpected leftovers: %v", rep.Released)
	}
	trigger.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(trigger); err != nil || string(got) != "tcp "+addrA.String() {
		t.Errorf("queued connection got %q, %v; want %q", got, err, "tcp "+addrA.String())
	}
	for _, a := range []netip.AddrPort{addrA, addrB} {
		if got, want := exchange(t, "udp", a), "udp "+a.String(); got != want {
			t.Errorf("udp %s answered %q, want %q", a, got, want)
		}
	}
	if got, want := exchange(t, "tcp", addrB), "tcp "+addrB.String(); got != want {
		t.Errorf("tcp %s answered %q, want %q", addrB, got, want)
	}
}
