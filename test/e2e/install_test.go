package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallScriptIntoTree runs deploy/install.sh with DESTDIR and checks
// that it places every file and validates the profile it installs.
func TestInstallScriptIntoTree(t *testing.T) {
	root := t.TempDir()
	cmd := exec.Command("bash", "../../deploy/install.sh")
	cmd.Env = append(os.Environ(), "DESTDIR="+root, "LOCALDNS_BIN="+binary)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "localdns.yaml: valid") {
		t.Errorf("install.sh did not validate the profile:\n%s", out)
	}
	for _, f := range []string{
		"usr/bin/localdns",
		"etc/localdns/localdns.yaml",
		"etc/systemd/system/localdns.service",
		"etc/systemd/system/localdns.socket",
		"etc/systemd/system/localdns.slice",
		"usr/lib/sysusers.d/localdns.conf",
	} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("install.sh did not place %s: %v", f, err)
		}
	}
	// A second run keeps an edited profile.
	profile := filepath.Join(root, "etc/localdns/localdns.yaml")
	if err := os.WriteFile(profile, []byte("mode: Disabled\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := cmd2(root).CombinedOutput(); err != nil {
		t.Fatalf("second install.sh: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(profile); string(b) != "mode: Disabled\n" {
		t.Errorf("second install overwrote the operator's profile: %q", b)
	}
}

func cmd2(root string) *exec.Cmd {
	cmd := exec.Command("bash", "../../deploy/install.sh")
	cmd.Env = append(os.Environ(), "DESTDIR="+root, "LOCALDNS_BIN="+binary)
	return cmd
}
