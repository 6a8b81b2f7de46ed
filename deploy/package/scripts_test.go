package debpkg

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// scriptRoot is a throwaway root for the maintainer scripts: the package's
// files as dpkg would unpack them, a shell and rm, and stand-ins for
// systemctl and systemd-sysusers that only record how they were called.
// The scripts run chrooted into it and in a network namespace of their own,
// so the teardown they run touches neither this machine's files nor its
// network; nothing is installed on the machine.
type scriptRoot struct {
	dir, ctrl string
}

var soPath = regexp.MustCompile(`(/[^ ]+\.so[^ ]*)`)

func newScriptRoot(t *testing.T) *scriptRoot {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the maintainer scripts run in a chroot and a network namespace (CI runs as root)")
	}
	for _, tool := range []string{"unshare", "chroot", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	pkg := deb(t)
	r := &scriptRoot{dir: t.TempDir()}
	r.ctrl = filepath.Join(r.dir, "ctrl")
	dpkgDeb(t, "-x", pkg, r.dir)
	dpkgDeb(t, "-e", pkg, r.ctrl)
	// A shell and rm with the libraries they load.
	for dst, src := range map[string]string{"bin/sh": "/bin/sh", "bin/rm": "/bin/rm"} {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			t.Fatal(err)
		}
		r.copy(t, real, dst, 0o755)
		out, err := exec.Command("ldd", real).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", real, err)
		}
		for _, lib := range soPath.FindAllString(string(out), -1) {
			r.copy(t, lib, strings.TrimPrefix(lib, "/"), 0o755)
		}
	}
	for _, tool := range []string{"usr/bin/systemctl", "usr/bin/systemd-sysusers"} {
		r.write(t, tool, "#!/bin/sh\necho \"${0##*/} $*\" >>/calls.log\n", 0o755)
	}
	r.mkdir(t, "run/systemd/system") // systemd is running this "system"
	r.mkdir(t, "dev")
	if err := unix.Mknod(filepath.Join(r.dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod /dev/null: %v", err)
	}
	return r
}

func (r *scriptRoot) copy(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	r.write(t, dst, string(b), mode)
}

func (r *scriptRoot) write(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	r.mkdir(t, filepath.Dir(path))
	if err := os.WriteFile(filepath.Join(r.dir, path), []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

func (r *scriptRoot) mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(r.dir, path), 0o755); err != nil {
		t.Fatal(err)
	}
}

func (r *scriptRoot) exists(path string) bool {
	_, err := os.Lstat(filepath.Join(r.dir, path))
	return err == nil
}

// run runs one maintainer script with dpkg's arguments and returns its
// output and the systemctl and systemd-sysusers calls it made.
func (r *scriptRoot) run(t *testing.T, script string, args ...string) (string, []string) {
	t.Helper()
	os.Remove(filepath.Join(r.dir, "calls.log"))
	cmd := exec.Command("unshare", append([]string{"--net", "chroot", r.dir, "/bin/sh", "/ctrl/" + script}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", script, args, err, out)
	}
	var calls []string
	if b, err := os.ReadFile(filepath.Join(r.dir, "calls.log")); err == nil {
		calls = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	return string(out), calls
}

func wantCalls(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: calls\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

const (
	sysusers     = "systemd-sysusers localdns.conf"
	enable       = "systemctl enable localdns.socket localdns.service"
	daemonReload = "systemctl daemon-reload"
)

// TestPostinst: a fresh install creates the user, enables both units and,
// with the valid shipped profile, starts them; an upgrade restarts only the
// service (the socket keeps queueing) and does not re-enable what an
// operator disabled; an invalid profile leaves everything stopped and says
// what to edit; without a running systemd only the user and the enablement
// are done.
func TestPostinst(t *testing.T) {
	r := newScriptRoot(t)

	_, calls := r.run(t, "postinst", "configure", "")
	wantCalls(t, "fresh install", calls, sysusers, enable, daemonReload, "systemctl start localdns.socket localdns.service")

	_, calls = r.run(t, "postinst", "configure", "1.2.2")
	wantCalls(t, "upgrade", calls, sysusers, daemonReload, "systemctl try-restart localdns.service")

	profile := filepath.Join(r.dir, "etc/localdns/localdns.yaml")
	shipped := readFile(t, profile)
	if !strings.Contains(shipped, "\nmode: Preferred\n") {
		t.Fatal("the shipped profile no longer sets mode: Preferred; change the mutation below")
	}
	r.write(t, "etc/localdns/localdns.yaml", strings.Replace(shipped, "\nmode: Preferred\n", "\nmode: Sometimes\n", 1), 0o644)
	out, calls := r.run(t, "postinst", "configure", "")
	wantCalls(t, "fresh install, invalid profile", calls, sysusers, enable, daemonReload)
	for _, want := range []string{"mode: \"Sometimes\": must be one of", "edit /etc/localdns/localdns.yaml"} {
		if !strings.Contains(out, want) {
			t.Errorf("invalid profile: output lacks %q:\n%s", want, out)
		}
	}
	_, calls = r.run(t, "postinst", "configure", "1.2.2")
	wantCalls(t, "upgrade, invalid profile: the running service is left alone", calls, sysusers, daemonReload)

	r.write(t, "etc/localdns/localdns.yaml", shipped, 0o644)
	if err := os.Remove(filepath.Join(r.dir, "run/systemd/system")); err != nil {
		t.Fatal(err)
	}
	_, calls = r.run(t, "postinst", "configure", "")
	wantCalls(t, "fresh install without a running systemd", calls, sysusers, enable)
}

// TestRemoveAndPurge: an upgrade's prerm stops nothing; removal stops and
// disables both units; purge removes the fallback's nftables table (with
// nft: the binary is gone), the cache snapshot and runtime state.
func TestRemoveAndPurge(t *testing.T) {
	r := newScriptRoot(t)

	_, calls := r.run(t, "prerm", "upgrade", "1.2.4")
	wantCalls(t, "prerm upgrade", calls)

	// teardown runs in the empty network namespace: nothing to remove.
	_, calls = r.run(t, "prerm", "remove")
	wantCalls(t, "prerm remove", calls,
		"systemctl stop localdns.socket localdns.service", "systemctl disable localdns.socket localdns.service")

	r.write(t, "var/lib/localdns/cache.snapshot", "snapshot", 0o600)
	r.write(t, "run/localdns/state.json", "{}", 0o600)
	_, calls = r.run(t, "postrm", "remove")
	wantCalls(t, "postrm remove", calls, daemonReload)
	if !r.exists("var/lib/localdns/cache.snapshot") {
		t.Error("remove (not purge) deleted the cache snapshot")
	}
	out, calls := r.run(t, "postrm", "purge")
	wantCalls(t, "postrm purge without nft", calls, daemonReload)
	if !strings.Contains(out, "nft is not installed") {
		t.Errorf("postrm purge without nft does not say the fallback table may be left:\n%s", out)
	}
	for _, p := range []string{"var/lib/localdns", "run/localdns"} {
		if r.exists(p) {
			t.Errorf("purge left /%s", p)
		}
	}

	// The fallback that remove left in place goes with nft (the binary
	// is gone by now). This stand-in has the fallback table only.
	r.write(t, "usr/sbin/nft", "#!/bin/sh\necho \"nft $*\" >>/calls.log\n[ \"$*\" != \"list table inet localdns\" ]\n", 0o755)
	_, calls = r.run(t, "postrm", "purge")
	wantCalls(t, "postrm purge", calls, daemonReload,
		"nft list table inet localdns-fallback", "nft delete table inet localdns-fallback", "nft list table inet localdns")
}

// TestGenerator runs the packaged generator as systemd would (three output
// directories) on the shipped profile: the drop-ins carry AKS's defaults.
// Without a profile it writes nothing.
func TestGenerator(t *testing.T) {
	r := newScriptRoot(t)
	gen := "/usr/lib/systemd/system-generators/localdns-generator"
	run := func() {
		cmd := exec.Command("unshare", "--net", "chroot", r.dir, "/bin/sh", gen, "/gen", "/gen.early", "/gen.late")
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("generator: %v\n%s", err, out)
		}
	}
	r.mkdir(t, "gen")
	run()
	slice := readFile(t, filepath.Join(r.dir, "gen/localdns.slice.d/50-limits.conf"))
	svc := readFile(t, filepath.Join(r.dir, "gen/localdns.service.d/50-limits.conf"))
	for _, want := range []string{"\nCPUQuota=200%\n", "\nMemoryMax=128M\n"} {
		if !strings.Contains(slice, want) {
			t.Errorf("slice drop-in lacks %q:\n%s", want, slice)
		}
	}
	if !strings.Contains(svc, "\nEnvironment=GOMEMLIMIT=111MiB\n") {
		t.Errorf("service drop-in:\n%s", svc)
	}

	if err := os.RemoveAll(filepath.Join(r.dir, "gen")); err != nil {
		t.Fatal(err)
	}
	r.mkdir(t, "gen")
	if err := os.Remove(filepath.Join(r.dir, "etc/localdns/localdns.yaml")); err != nil {
		t.Fatal(err)
	}
	run()
	if entries, _ := os.ReadDir(filepath.Join(r.dir, "gen")); len(entries) != 0 {
		t.Errorf("without a profile the generator wrote %v", entries)
	}
}
