// Package testbin holds what the tests that run localdns as a process share:
// building the binary once per package, free loopback ports, and a log
// buffer for the process's output.
package testbin

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Main builds cmd/localdns into a temporary directory, stores its path in
// *binary, runs the tests and exits with their code. Use it as TestMain's
// body: func TestMain(m *testing.M) { testbin.Main(m, &binary) }.
func Main(m *testing.M, binary *string) {
	dir, err := os.MkdirTemp("", "localdns-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*binary = filepath.Join(dir, "localdns")
	build := exec.Command("go", "build", "-o", *binary, "github.com/localdns/localdns/cmd/localdns")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build localdns:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// FreePorts returns n different ports that are free for both UDP and TCP on
// every one of addrs (127.0.0.1 when none is given). They are released
// before returning, so a test binds them right after.
func FreePorts(t testing.TB, n int, addrs ...string) []int {
	t.Helper()
	if len(addrs) == 0 {
		addrs = []string{"127.0.0.1"}
	}
	var ports []int
	for try := 0; len(ports) < n; try++ {
		if try == 100 {
			t.Fatalf("no %d ports free on all of %v", n, addrs)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !slices.Contains(ports, port) && portFree(port, addrs...) {
			ports = append(ports, port)
		}
	}
	return ports
}

func portFree(port int, addrs ...string) bool {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, a := range addrs {
		hp := net.JoinHostPort(a, fmt.Sprint(port))
		ln, err := net.Listen("tcp", hp)
		if err != nil {
			return false
		}
		closers = append(closers, ln)
		pc, err := net.ListenPacket("udp", hp)
		if err != nil {
			return false
		}
		closers = append(closers, pc)
	}
	return true
}

// Log collects what a process writes to stdout and stderr; it is safe for
// the exec package's copying goroutines and the test reading it.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// WaitFor polls cond until it holds, and fails the test when within passes
// first, saying what it waited for.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
