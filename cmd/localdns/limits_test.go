package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func writeProfile(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "localdns.yaml")
	if err := os.WriteFile(path, []byte("clusterDNS: [127.0.0.1]\nvnetDNS: [127.0.0.1]\n"+doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLimitsDropIns writes the drop-ins for AKS's defaults and for a
// profile that sets both fields, and checks each value.
func TestLimitsDropIns(t *testing.T) {
	cases := []struct {
		doc                             string
		cpuQuota, memoryMax, goMemLimit string
	}{
		{"", "200%", "128M", "GOMEMLIMIT=111MiB"}, // 1.5 x 42 + 48
		{"cpuLimitInMilliCores: 1500\nmemoryLimitInMB: 256\n", "150%", "256M", "GOMEMLIMIT=240MiB"},
		// A small explicit cache needs less than the memory limit allows.
		{"memoryLimitInMB: 512\ncache: {maxMemory: 16Mi}\n", "200%", "512M", "GOMEMLIMIT=72MiB"},
	}
	for _, c := range cases {
		profile := writeProfile(t, c.doc)
		dir := t.TempDir()
		var out, errOut bytes.Buffer
		if code := limitsCmd([]string{"--config", profile, "--unit-dir", dir}, &out, &errOut); code != 0 {
			t.Fatalf("%q: exit %d: %s", c.doc, code, errOut.String())
		}
		slice := readFile(t, filepath.Join(dir, "localdns.slice.d", limitsDropIn))
		svc := readFile(t, filepath.Join(dir, "localdns.service.d", limitsDropIn))
		for _, want := range []string{"[Slice]\n", "\nCPUQuota=" + c.cpuQuota + "\n", "\nMemoryMax=" + c.memoryMax + "\n"} {
			if !strings.Contains(slice, want) {
				t.Errorf("%q: slice drop-in lacks %q:\n%s", c.doc, want, slice)
			}
		}
		for _, want := range []string{"[Service]\n", "\nEnvironment=" + c.goMemLimit + "\n"} {
			if !strings.Contains(svc, want) {
				t.Errorf("%q: service drop-in lacks %q:\n%s", c.doc, want, svc)
			}
		}
		// Printing gives the same text.
		out.Reset()
		if code := limitsCmd([]string{"--config", profile}, &out, &errOut); code != 0 || !strings.Contains(out.String(), slice) || !strings.Contains(out.String(), svc) {
			t.Errorf("%q: printed drop-ins differ from the written ones (exit %d):\n%s", c.doc, code, out.String())
		}
	}
}

// TestLimitsInvalidProfileWritesNothing: a profile whose cache does not fit
// its memory limit is refused, with the reason, and no drop-in is left.
func TestLimitsInvalidProfileWritesNothing(t *testing.T) {
	profile := writeProfile(t, "cache: {maxMemory: 64Mi}\n")
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if code := limitsCmd([]string{"--config", profile, "--unit-dir", dir}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "does not fit in memoryLimitInMB 128") {
		t.Errorf("stderr does not say why: %s", errOut.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("wrote %v for an invalid profile", entries)
	}
}

// TestLimitsDropInsVerify has systemd-analyze check the drop-ins on top of
// the real units: any diagnostic (an unknown key is only a warning) fails.
func TestLimitsDropInsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	if code := limitsCmd([]string{"--config", writeProfile(t, "cpuLimitInMilliCores: 1505\n"), "--unit-dir", dir}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	// verify checks that Exec*= binaries exist: point them at a stub.
	stub := filepath.Join(dir, "localdns")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, u := range []string{"localdns.slice", "localdns.service", "localdns.socket"} {
		text := readFile(t, filepath.Join("..", "..", "systemd", u))
		text = strings.ReplaceAll(text, "/usr/bin/localdns", stub)
		if err := os.WriteFile(filepath.Join(dir, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, filepath.Join(dir, u))
	}
	// A drop-in with an unknown key proves verify reads this directory's
	// drop-ins at all (it only warns, so the check is on its output).
	bad := filepath.Join(dir, "localdns.slice.d", "99-probe.conf")
	if err := os.WriteFile(bad, []byte("[Slice]\nMemoryMaxx=1M\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, _ := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput(); !strings.Contains(string(o), "MemoryMaxx") {
		t.Fatalf("systemd-analyze verify does not read the drop-in directory; output:\n%s", o)
	}
	os.Remove(bad)
	o, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(o))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, o)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
