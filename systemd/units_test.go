// Package systemd holds localdns's systemd units (localdns.service,
// localdns.socket, localdns.slice; see README.md). It has no Go code: these
// tests check the units with systemd's own tools and against the profile
// defaults they must agree with.
package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/localdns/localdns/internal/config"
)

var units = []string{"localdns.service", "localdns.socket", "localdns.slice"}

// binPath is where the units run localdns: where the Debian package and
// deploy/install.sh put it.
const binPath = "/usr/bin/localdns"

// built is cmd/localdns compiled once for the tests that run it.
var built struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// localdnsBinary builds ../cmd/localdns once per test run, or returns
// $LOCALDNS_BINARY when set (to test the units against a release build).
func localdnsBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LOCALDNS_BINARY"); p != "" {
		return p
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "localdns-units-test-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "localdns")
		built.out, built.err = exec.Command(gobin, "build", "-o", built.path, "../cmd/localdns").CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build ../cmd/localdns: %v\n%s", built.err, built.out)
	}
	return built.path
}

// maxExposure is the highest `systemd-analyze security` exposure we accept
// for localdns.service (0 = fully locked down, 10 = unprotected).
const maxExposure = 4.0

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd)")
	}
	return path
}

// TestVerify runs `systemd-analyze verify` on the three units. verify checks
// that every Exec*= binary exists and is executable, so the units are copied
// to a temporary directory with /usr/bin/localdns pointed at a stub
// executable there; nothing else is changed. Any diagnostic fails the test,
// warnings included (an unknown or misspelt key is only a warning).
func TestVerify(t *testing.T) {
	analyze := systemdAnalyze(t)
	dir := t.TempDir()
	stub := filepath.Join(dir, "localdns")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), binPath) && u != "localdns.slice" {
			t.Errorf("%s does not run %s", u, binPath)
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), binPath, stub)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for localdns\.service: ([0-9.]+)`)

// TestSecurity rates localdns.service with `systemd-analyze security
// --offline=true` and fails above maxExposure.
func TestSecurity(t *testing.T) {
	analyze := systemdAnalyze(t)
	out, err := exec.Command(analyze, "security", "--offline=true", "--no-pager", "./localdns.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security: localdns.service exposure %.1f (limit %.1f)", score, maxExposure)
	if score > maxExposure {
		t.Errorf("exposure %.1f above %.1f:\n%s", score, maxExposure, out)
	}
}

// unit is a parsed unit file: section -> key -> values, in order (keys such as
// ListenDatagram= and SystemCallFilter= may repeat).
type unit map[string]map[string][]string

func parse(t *testing.T, name string) unit {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", name, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s = %q, want exactly one value", section, key, v)
	}
	return v[0]
}

// TestUnitsMatchProfileDefaults: the units and the profile defaults describe
// the same node, so a change to one without the other fails here.
func TestUnitsMatchProfileDefaults(t *testing.T) {
	svc, sock, slice := parse(t, "localdns.service"), parse(t, "localdns.socket"), parse(t, "localdns.slice")

	// The socket unit listens, over UDP and TCP, on exactly the default
	// listeners' addresses.
	var want []string
	for _, ip := range []string{config.DefaultNodeListener, config.DefaultClusterListener} {
		want = append(want, ip+":"+strconv.Itoa(config.DefaultPort))
	}
	for _, key := range []string{"ListenDatagram", "ListenStream"} {
		got := slices.Sorted(slices.Values(sock["Socket"][key]))
		if !slices.Equal(got, want) {
			t.Errorf("localdns.socket %s = %v, want %v", key, got, want)
		}
	}
	if sock.one(t, "Socket", "FreeBind") != "yes" {
		t.Error("localdns.socket must bind with FreeBind=yes: the addresses appear only when localdns starts")
	}

	// The service is socket-activated, notify-type, watchdog-fed, in the slice.
	for key, val := range map[string]string{
		"Type": "notify", "NotifyAccess": "main", "Sockets": "localdns.socket",
		"Slice": "localdns.slice", "Restart": "always", "User": "localdns",
	} {
		if got := svc.one(t, "Service", key); got != val {
			t.Errorf("localdns.service %s=%s, want %s", key, got, val)
		}
	}
	if sock.one(t, "Socket", "Service") != "localdns.service" {
		t.Error("localdns.socket does not activate localdns.service")
	}

	// Memory: cache budget < GOMEMLIMIT < slice MemoryMax.
	var gomemlimit int64
	for _, env := range svc["Service"]["Environment"] {
		if v, ok := strings.CutPrefix(env, "GOMEMLIMIT="); ok {
			mib, err := strconv.ParseInt(strings.TrimSuffix(v, "MiB"), 10, 64)
			if err != nil || !strings.HasSuffix(v, "MiB") {
				t.Fatalf("GOMEMLIMIT=%s: want <n>MiB", v)
			}
			gomemlimit = mib << 20
		}
	}
	maxStr := slice.one(t, "Slice", "MemoryMax")
	memMax, err := strconv.ParseInt(strings.TrimSuffix(maxStr, "M"), 10, 64)
	if err != nil || !strings.HasSuffix(maxStr, "M") {
		t.Fatalf("MemoryMax=%s: want <n>M", maxStr)
	}
	memMax <<= 20
	if !(config.DefaultMaxMemory < gomemlimit && gomemlimit < memMax) {
		t.Errorf("want cache budget %d < GOMEMLIMIT %d < MemoryMax %d", config.DefaultMaxMemory, gomemlimit, memMax)
	}
	// Room for the collector: at least half the cache budget again between
	// the cache and GOMEMLIMIT, and the non-heap memory above it.
	if gomemlimit-config.DefaultMaxMemory < config.DefaultMaxMemory/2 || memMax-gomemlimit < 32<<20 {
		t.Errorf("too little headroom: cache %d MiB, GOMEMLIMIT %d MiB, MemoryMax %d MiB",
			config.DefaultMaxMemory>>20, gomemlimit>>20, memMax>>20)
	}

	// The teardown that removes addresses runs when the sockets go, never on
	// a service restart (the socket keeps queueing queries for the address):
	// the service's ExecStopPost, which runs on every restart, must keep
	// everything while the sockets are held; the socket's removes it.
	if got := svc.one(t, "Service", "ExecStopPost"); !strings.Contains(got, " teardown ") || !strings.Contains(got, " --keep-if-held ") {
		t.Errorf("localdns.service ExecStopPost=%s, want teardown --keep-if-held", got)
	}
	if got := sock.one(t, "Socket", "ExecStopPost"); !strings.Contains(got, " teardown ") || strings.Contains(got, "--keep-if-held") {
		t.Errorf("localdns.socket ExecStopPost=%s, want an unconditional teardown", got)
	}
}

// TestSysusers: the sysusers.d entry creates the user the units run as.
func TestSysusers(t *testing.T) {
	sysusers, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Skip("systemd-sysusers not installed (Debian package systemd)")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("localdns.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sysusers, "--dry-run", "--root="+root, abs).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	user := parse(t, "localdns.service").one(t, "Service", "User")
	if !strings.Contains(string(out), "Creating user '"+user+"'") {
		t.Errorf("sysusers does not create user %q:\n%s", user, out)
	}
}

// TestCommandLines builds cmd/localdns and checks that every localdns command
// line in the units names a subcommand that exists and only flags it
// declares, so renaming a flag cannot silently break ExecStart or a teardown.
func TestCommandLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/localdns; skipped with -short")
	}
	bin := localdnsBinary(t)
	var lines []string
	for _, name := range []string{"localdns.service", "localdns.socket"} {
		for _, section := range parse(t, name) {
			for key, vals := range section {
				if !strings.HasPrefix(key, "Exec") {
					continue
				}
				for _, v := range vals {
					// Without systemd's prefixes: "-" (failure ignored) etc.
					if v = strings.TrimLeft(v, "-@:+!"); strings.HasPrefix(v, binPath+" ") {
						lines = append(lines, name+" "+key+": "+v)
					}
				}
			}
		}
	}
	if len(lines) < 4 {
		t.Fatalf("found %d localdns command lines, want ExecStart, the socket's ExecStartPre and two ExecStopPost: %q", len(lines), lines)
	}
	for _, line := range lines {
		_, cmdline, _ := strings.Cut(line, ": ")
		args := strings.Fields(cmdline)[1:]
		out, err := exec.Command(bin, args[0], "--help").CombinedOutput()
		if err != nil {
			t.Errorf("%s: `localdns %s --help`: %v\n%s", line, args[0], err, out)
			continue
		}
		help := string(out)
		for _, a := range args[1:] {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			flag := "-" + strings.TrimLeft(a, "-")
			if !strings.Contains(help, "  "+flag+" ") && !strings.Contains(help, "  "+flag+"\n") {
				t.Errorf("%s: flag %s is not a flag of `localdns %s`:\n%s", line, a, args[0], help)
			}
		}
		t.Logf("ok: %s", line)
	}
}
