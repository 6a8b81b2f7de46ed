// Package testbin builds the localdns binary once for a test package that
// runs it as a process (the end-to-end, node and observability tests).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
