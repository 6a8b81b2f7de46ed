// Package debpkg holds the tests of the localdns Debian package that `make
// package` builds with nfpm (nfpm.yaml, scripts/, localdns-generator).
package debpkg

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

const testVersion = "1.2.3~test"

var built struct {
	once sync.Once
	deb  string
	out  []byte
	err  error
}

// deb builds the package for this machine's architecture with `make
// package` (the real build, nfpm included), once per test run, or returns
// $LOCALDNS_DEB when set (to test a release artifact).
func deb(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LOCALDNS_DEB"); p != "" {
		return p
	}
	for _, tool := range []string{"make", "go", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	built.once.Do(func() {
		dist, err := os.MkdirTemp("", "localdns-deb-test-")
		if err != nil {
			built.err = err
			return
		}
		cmd := exec.Command("make", "-C", "../..", "package", "PACKAGE_ARCHS="+runtime.GOARCH, "VERSION="+testVersion, "DIST="+dist)
		built.out, built.err = cmd.CombinedOutput()
		built.deb = filepath.Join(dist, "localdns_"+testVersion+"_"+runtime.GOARCH+".deb")
	})
	if built.err != nil {
		t.Fatalf("make package: %v\n%s", built.err, built.out)
	}
	return built.deb
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.deb != "" && os.Getenv("LOCALDNS_DEB") == "" {
		os.RemoveAll(filepath.Dir(built.deb))
	}
	os.Exit(code)
}

func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).Output()
	if err != nil {
		t.Fatalf("dpkg-deb %v: %v", args, err)
	}
	return string(out)
}

// shipped is every file of the package: mode and where it comes from in
// the repository ("" for the binary).
var shipped = map[string]struct{ mode, src string }{
	"/usr/bin/localdns":                                     {"-rwxr-xr-x", ""},
	"/usr/lib/systemd/system/localdns.service":              {"-rw-r--r--", "systemd/localdns.service"},
	"/usr/lib/systemd/system/localdns.socket":               {"-rw-r--r--", "systemd/localdns.socket"},
	"/usr/lib/systemd/system/localdns.slice":                {"-rw-r--r--", "systemd/localdns.slice"},
	"/usr/lib/systemd/system-generators/localdns-generator": {"-rwxr-xr-x", "deploy/package/localdns-generator"},
	"/usr/lib/sysusers.d/localdns.conf":                     {"-rw-r--r--", "systemd/localdns.sysusers"},
	"/etc/localdns/localdns.yaml":                           {"-rw-r--r--", "deploy/localdns.yaml"},
	"/usr/share/localdns/prometheus/scrape.yaml":            {"-rw-r--r--", "deploy/prometheus/scrape.yaml"},
	"/usr/share/localdns/prometheus/alerts.yaml":            {"-rw-r--r--", "deploy/prometheus/alerts.yaml"},
	"/usr/share/localdns/grafana/localdns.json":             {"-rw-r--r--", "deploy/grafana/localdns.json"},
	"/usr/share/localdns/kubelet/10-localdns.conf":          {"-rw-r--r--", "deploy/kubelet/10-localdns.conf"},
	"/usr/share/doc/localdns/kubelet.md":                    {"-rw-r--r--", "deploy/kubelet/README.md"},
}

// TestControl checks the control fields, the conffiles and the maintainer
// scripts the package carries.
func TestControl(t *testing.T) {
	pkg := deb(t)
	for field, want := range map[string]string{
		"Package": "localdns", "Version": testVersion, "Architecture": runtime.GOARCH,
		"Depends": "systemd (>= 247)", "Section": "net",
	} {
		if got := strings.TrimSpace(dpkgDeb(t, "-f", pkg, field)); got != want {
			t.Errorf("control %s: %q, want %q", field, got, want)
		}
	}
	ctrl := t.TempDir()
	dpkgDeb(t, "-e", pkg, ctrl)
	// The profile is the only conffile: an operator's edits survive
	// upgrades, and nothing else in /etc is the package's.
	if got := readFile(t, filepath.Join(ctrl, "conffiles")); strings.TrimSpace(got) != "/etc/localdns/localdns.yaml" {
		t.Errorf("conffiles:\n%s\nwant only /etc/localdns/localdns.yaml", got)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		want := readFile(t, filepath.Join("scripts", s))
		if got := readFile(t, filepath.Join(ctrl, s)); got != want {
			t.Errorf("%s differs from scripts/%s", s, s)
		}
		if st, err := os.Stat(filepath.Join(ctrl, s)); err != nil || st.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s is not executable: %v", s, err)
		}
		if out, err := exec.Command("sh", "-n", filepath.Join(ctrl, s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
	}
}

// TestContents checks the file list (paths, modes, owners), that every
// file is the repository's, and that the binary is a static build for the
// package's architecture.
func TestContents(t *testing.T) {
	pkg := deb(t)
	var files []string
	for line := range strings.SplitSeq(strings.TrimSpace(dpkgDeb(t, "-c", pkg)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		mode, owner, path := f[0], f[1], strings.TrimPrefix(f[len(f)-1], ".")
		if owner != "root/root" {
			t.Errorf("%s owned by %s, want root/root", path, owner)
		}
		if strings.HasPrefix(mode, "d") {
			if strings.HasPrefix(path, "/usr/local") {
				t.Errorf("a Debian package must not ship %s", path)
			}
			continue
		}
		files = append(files, path)
		want, ok := shipped[path]
		if !ok {
			t.Errorf("unexpected file %s", path)
			continue
		}
		if mode != want.mode {
			t.Errorf("%s mode %s, want %s", path, mode, want.mode)
		}
	}
	for path := range shipped {
		if !slices.Contains(files, path) {
			t.Errorf("missing %s", path)
		}
	}

	root := t.TempDir()
	dpkgDeb(t, "-x", pkg, root)
	for path, f := range shipped {
		if f.src == "" {
			continue
		}
		if got, want := readFile(t, filepath.Join(root, path)), readFile(t, filepath.Join("..", "..", f.src)); got != want {
			t.Errorf("%s differs from %s", path, f.src)
		}
	}
	bin := filepath.Join(root, "usr/bin/localdns")
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]
	if ef.Machine != machine {
		t.Errorf("binary for %s, want %s", ef.Machine, machine)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a program interpreter: not a static (CGO_ENABLED=0) build")
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "localdns "+testVersion+"\n") {
		t.Errorf("localdns version: %v\n%s", err, out)
	}
	// The example profile the package installs is valid as shipped.
	if out, err := exec.Command(bin, "validate", "--config", filepath.Join(root, "etc/localdns/localdns.yaml")).CombinedOutput(); err != nil {
		t.Errorf("the shipped profile is invalid: %v\n%s", err, out)
	}
}

// TestUnitsRunThePackagedBinary: every Exec line of the packaged units runs
// the binary where the package puts it.
func TestUnitsRunThePackagedBinary(t *testing.T) {
	for _, u := range []string{"localdns.service", "localdns.socket"} {
		text := readFile(t, filepath.Join("..", "..", "systemd", u))
		n := 0
		for line := range strings.SplitSeq(text, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "Exec") && strings.Contains(v, "localdns ") {
				n++
				// The command is the first word, after systemd's prefixes ("-": failure ignored).
				if !strings.HasPrefix(strings.TrimLeft(v, "-@:+!"), "/usr/bin/localdns ") {
					t.Errorf("%s: %s does not run /usr/bin/localdns", u, line)
				}
			}
		}
		if n == 0 {
			t.Errorf("%s has no Exec line that runs localdns", u)
		}
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
