// Package testnotify plays systemd's side of sd_notify for tests: a
// unixgram socket whose path a test puts in NOTIFY_SOCKET, and the
// notifications the daemon (in-process or a child process) sends to it.
// systemd as PID 1 cannot run on the test machines, so this is the boundary
// the tests stop at.
package testnotify

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Notification is one datagram: one sd_notify call, split into its
// KEY=VALUE lines, and when it arrived.
type Notification struct {
	At    time.Time
	Lines []string
}

// Has reports whether n carries line ("READY=1").
func (n Notification) Has(line string) bool { return slices.Contains(n.Lines, line) }

// Socket is a listening notification socket.
type Socket struct {
	// Path is the socket's path, for NOTIFY_SOCKET.
	Path string
	ch   chan Notification // every notification, in arrival order

	mu  sync.Mutex
	all []Notification // every notification so far, for Count
}

// Listen opens a socket that lives until the test ends.
func Listen(t testing.TB) *Socket {
	t.Helper()
	// A short path: sun_path holds 108 bytes, t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "ldnotify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Socket{Path: filepath.Join(dir, "notify"), ch: make(chan Notification, 4096)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		defer close(s.ch)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msg := Notification{At: time.Now(), Lines: strings.Split(strings.TrimSpace(string(buf[:n])), "\n")}
			s.mu.Lock()
			s.all = append(s.all, msg)
			s.mu.Unlock()
			s.ch <- msg
		}
	}()
	return s
}

// Receive waits up to d for the next notification.
func (s *Socket) Receive(d time.Duration) (Notification, bool) {
	select {
	case n, ok := <-s.ch:
		return n, ok
	case <-time.After(d):
		return Notification{}, false
	}
}

// Collect returns every notification that arrives within d.
func (s *Socket) Collect(d time.Duration) []Notification {
	var out []Notification
	deadline := time.Now().Add(d)
	for {
		n, ok := s.Receive(time.Until(deadline))
		if !ok {
			return out
		}
		out = append(out, n)
	}
}

// Next waits up to d for a notification carrying line and returns it and
// the ones received before it.
func (s *Socket) Next(line string, d time.Duration) (Notification, []Notification, bool) {
	var before []Notification
	deadline := time.Now().Add(d)
	for {
		n, ok := s.Receive(time.Until(deadline))
		if !ok {
			return Notification{}, before, false
		}
		if n.Has(line) {
			return n, before, true
		}
		before = append(before, n)
	}
}

// Count returns how many notifications received so far carried line,
// whether or not Receive, Collect or Next consumed them.
func (s *Socket) Count(line string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Count(s.all, line)
}

// Mark sends a datagram of the test's own to the socket. Datagrams on one
// socket are queued in the order they were sent, so a mark splits the
// stream exactly into "sent before" and "sent after".
func (s *Socket) Mark(t testing.TB, label string) {
	t.Helper()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.Path, Net: "unixgram"})
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte("TEST_MARK=" + label)); err != nil {
		t.Error(err)
	}
}

// Count returns how many of ns carry line.
func Count(ns []Notification, line string) int {
	c := 0
	for _, n := range ns {
		if n.Has(line) {
			c++
		}
	}
	return c
}
