package sockact

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	if s, err := ParseSpec("udp:169.254.10.11:53"); err != nil || s != (Spec{"udp", "169.254.10.11:53"}) {
		t.Errorf("got %v %v", s, err)
	}
	for _, bad := range []string{"sctp:1.2.3.4:5", "udp:1.2.3.4", "udp"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestEnvironmentAndSocketsSurviveRestart runs a shell service twice on the
// same held UDP socket: each generation sees LISTEN_PID equal to its own PID
// and the socket at fd 3, and a datagram sent while no process runs is
// still queued for the second one.
func TestEnvironmentAndSocketsSurviveRestart(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 needed for the fd-reading service")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// The service records its environment, then reads one datagram from fd 3.
	script := `import os, socket, sys
s = socket.socket(fileno=3)
with open(sys.argv[1], "a") as f:
    f.write("%s %s %s %s\n" % (os.environ["LISTEN_PID"] == str(os.getpid()), os.environ["LISTEN_FDS"], os.environ["LISTEN_FDNAMES"], s.recv(64).decode()))
`
	py := filepath.Join(dir, "svc.py")
	if err := os.WriteFile(py, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New([]Spec{{"udp", "127.0.0.1:0"}}, 1<<20, []string{"python3", py, out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Port 0: find out where the held socket is bound.
	pc, err := net.FilePacketConn(s.files[0])
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()

	send := func(msg string) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(msg))
	}
	// Queued before any process runs: the socket is already there.
	send("first")
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("first generation did not finish")
	}
	send("second")
	if err := s.Restart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("second generation did not finish")
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "first") || !strings.HasSuffix(lines[1], "second") {
		t.Fatalf("service output:\n%s", data)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "True 1 udp-127-0-0-1-0 ") {
			t.Errorf("environment seen by the service: %q", l)
		}
	}
}

func TestUnitReceiveBuffer(t *testing.T) {
	dir := t.TempDir()
	for unit, want := range map[string]int{
		"[Socket]\nListenDatagram=1.2.3.4:53\nReceiveBuffer=8M\n": 8 << 20,
		"[Socket]\nReceiveBuffer = 512K\n":                        512 << 10,
		"[Socket]\nReceiveBuffer=65536\n":                         65536,
		"[Socket]\nListenDatagram=1.2.3.4:53\n":                   0,
	} {
		path := filepath.Join(dir, "x.socket")
		os.WriteFile(path, []byte(unit), 0o644)
		if got, err := UnitReceiveBuffer(path); err != nil || got != want {
			t.Errorf("%q: got %d %v, want %d", unit, got, err, want)
		}
	}
	path := filepath.Join(dir, "bad.socket")
	os.WriteFile(path, []byte("ReceiveBuffer=lots\n"), 0o644)
	if _, err := UnitReceiveBuffer(path); err == nil {
		t.Error("bad size accepted")
	}
}
