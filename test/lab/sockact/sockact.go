// Package sockact does for the lab what systemd does for localdns on a node
// with localdns.socket: it binds the listener sockets once, passes them to
// the service process by socket activation (LISTEN_FDS, LISTEN_PID,
// LISTEN_FDNAMES, descriptors from 3 on), and on a restart stops the process
// (SIGTERM, wait for exit) and starts a new one on the same sockets. The
// kernel keeps queueing queries on the sockets between the two processes.
//
// systemd-socket-activate (Debian's systemd package) cannot stand in here:
// it execs the service once and gives up the sockets with it, so there is
// nothing that outlives a restart.
//
// Without listen specs the supervisor holds no sockets and a restart is a
// plain stop and start: the lab uses that to measure what a restart loses
// when socket activation is not used.
package sockact

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Spec is one socket: "udp" or "tcp" and an address.
type Spec struct {
	Network string
	Addr    string
}

// ParseSpec parses "udp:169.254.10.11:53".
func ParseSpec(s string) (Spec, error) {
	network, addr, ok := strings.Cut(s, ":")
	if !ok || (network != "udp" && network != "tcp") {
		return Spec{}, fmt.Errorf("socket %q: want udp:ADDR:PORT or tcp:ADDR:PORT", s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return Spec{}, fmt.Errorf("socket %q: %w", s, err)
	}
	return Spec{Network: network, Addr: addr}, nil
}

func (s Spec) String() string { return s.Network + ":" + s.Addr }

// Supervisor runs a service process on held sockets.
type Supervisor struct {
	argv   []string
	files  []*os.File
	names  []string
	stdout *os.File
	stderr *os.File

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// New binds specs (IP_FREEBIND, so the listener addresses may appear later,
// as with FreeBind=yes; rcvbuf bytes of receive buffer for UDP, as with
// ReceiveBuffer=) for the service argv.
func New(specs []Spec, rcvbuf int, argv []string) (*Supervisor, error) {
	if len(argv) == 0 {
		return nil, errors.New("sockact: no command")
	}
	s := &Supervisor{argv: argv, stdout: os.Stdout, stderr: os.Stderr}
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1); serr != nil {
				return
			}
			if rcvbuf > 0 && strings.HasPrefix(network, "udp") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	for _, sp := range specs {
		var (
			f   *os.File
			err error
		)
		switch sp.Network {
		case "udp":
			var pc net.PacketConn
			if pc, err = lc.ListenPacket(context.Background(), "udp", sp.Addr); err == nil {
				f, err = pc.(*net.UDPConn).File()
				pc.Close()
			}
		case "tcp":
			var ln net.Listener
			if ln, err = lc.Listen(context.Background(), "tcp", sp.Addr); err == nil {
				f, err = ln.(*net.TCPListener).File()
				ln.Close()
			}
		default:
			err = fmt.Errorf("unknown network %q", sp.Network)
		}
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("sockact: bind %s: %w", sp, err)
		}
		s.files = append(s.files, f)
		s.names = append(s.names, sp.Network+"-"+strings.NewReplacer(":", "-", ".", "-").Replace(sp.Addr))
	}
	return s, nil
}

// Start starts the service process. LISTEN_PID must be the service's own
// PID, known only after fork; as systemd sets it in the child, a shell sets
// it to its own PID and then execs the service, which keeps that PID.
func (s *Supervisor) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("sockact: already running")
	}
	args := append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$@"`, "sh"}, s.argv...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	cmd.Env = os.Environ()
	if len(s.files) > 0 {
		cmd.ExtraFiles = s.files
		cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(s.files)), "LISTEN_FDNAMES="+strings.Join(s.names, ":"))
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sockact: start %s: %w", s.argv[0], err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(s.exited)
	return nil
}

// Exited is closed when the current service process exits.
func (s *Supervisor) Exited() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exited
}

// PID returns the current service process's PID, or 0.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop sends SIGTERM and waits for the process to exit, SIGKILLing it after
// timeout (systemd's TimeoutStopSec).
func (s *Supervisor) Stop(timeout time.Duration) error {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("sockact: %s did not stop within %v, killed", s.argv[0], timeout)
	}
}

// Restart stops the service and starts it again on the same sockets.
func (s *Supervisor) Restart(timeout time.Duration) error {
	if err := s.Stop(timeout); err != nil {
		return err
	}
	return s.Start()
}

// Close stops nothing; it closes the held sockets.
func (s *Supervisor) Close() {
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
}

// UnitReceiveBuffer returns the ReceiveBuffer= of a systemd socket unit in
// bytes (systemd's 1024-based K, M, G suffixes), so the lab holds its sockets
// the way the shipped localdns.socket does. It returns 0 when the unit sets
// none.
func UnitReceiveBuffer(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("socket unit: %w", err)
	}
	size := 0
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.TrimSpace(k) != "ReceiveBuffer" {
			continue
		}
		v = strings.TrimSpace(v)
		mult := 1
		switch {
		case strings.HasSuffix(v, "K"):
			mult, v = 1<<10, strings.TrimSuffix(v, "K")
		case strings.HasSuffix(v, "M"):
			mult, v = 1<<20, strings.TrimSuffix(v, "M")
		case strings.HasSuffix(v, "G"):
			mult, v = 1<<30, strings.TrimSuffix(v, "G")
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("%s: ReceiveBuffer=%s: %w", path, v, err)
		}
		size = n * mult
	}
	return size, nil
}
