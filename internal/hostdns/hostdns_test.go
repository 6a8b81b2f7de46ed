package hostdns

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var nodeListener = netip.MustParseAddr("169.254.10.10")

// fakeHost stands for systemd's runtime directories in a temporary
// directory, and for networkd and resolved behind Config.Reload: it records
// every reload and, like networkd, rewrites NETWORK_FILE_DROPINS in the link
// state files on a networkd reload when reportsDropIns is set.
type fakeHost struct {
	t              *testing.T
	cfg            Config
	reloads        []string
	reloadErr      error
	reportsDropIns bool
	states         map[int]string // ifindex -> NETWORK_FILE ("" for unmanaged)
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	root := t.TempDir()
	h := &fakeHost{t: t, states: map[int]string{}}
	h.cfg = Config{
		Listener:          nodeListener,
		Interface:         "lo",
		NetworkRunDir:     filepath.Join(root, "run/systemd/network"),
		NetifLinksDir:     filepath.Join(root, "run/systemd/netif/links"),
		ResolvedDropInDir: filepath.Join(root, "run/systemd/resolved.conf.d"),
		ResolvedRunDir:    filepath.Join(root, "run/systemd/resolve"),
		Reload:            h.reload,
	}
	if err := os.MkdirAll(h.cfg.NetifLinksDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func loIndex(t *testing.T) int {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return lo.Index
}

// manage makes networkd manage the link with the given .network file
// ("" writes the state file of a link networkd leaves unmanaged).
func (h *fakeHost) manage(index int, networkFile string) {
	h.t.Helper()
	h.states[index] = networkFile
	h.writeState(index, nil)
}

func (h *fakeHost) writeState(index int, dropIns []string) {
	h.t.Helper()
	var b strings.Builder
	b.WriteString("# This is private data. Do not parse.\nADMIN_STATE=configured\nOPER_STATE=routable\n")
	if nf := h.states[index]; nf != "" {
		b.WriteString("NETWORK_FILE=" + nf + "\n")
		if h.reportsDropIns {
			var esc []string
			for _, d := range dropIns {
				esc = append(esc, strings.ReplaceAll(d, ":", `\x3a`))
			}
			b.WriteString(`NETWORK_FILE_DROPINS="` + strings.Join(esc, ":") + "\"\n")
		}
		b.WriteString("DNS=10.0.0.2\n")
	} else {
		b.WriteString("ADMIN_STATE=unmanaged\n")
	}
	if err := os.WriteFile(filepath.Join(h.cfg.NetifLinksDir, strconv.Itoa(index)), []byte(b.String()), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) reload(kind string) error {
	h.reloads = append(h.reloads, kind)
	if h.reloadErr != nil {
		return h.reloadErr
	}
	if kind == KindNetworkd {
		for index, nf := range h.states {
			if nf == "" {
				continue
			}
			dropIns, _ := filepath.Glob(filepath.Join(h.cfg.NetworkRunDir, filepath.Base(nf)+".d", "*.conf"))
			h.writeState(index, dropIns)
		}
	}
	return nil
}

func (h *fakeHost) takeReloads() []string {
	r := h.reloads
	h.reloads = nil
	return r
}

func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it gone, stat says %v", path, err)
	}
}

func TestRedirectNetworkd(t *testing.T) {
	for _, reports := range []bool{false, true} {
		t.Run("NETWORK_FILE_DROPINS="+strconv.FormatBool(reports), func(t *testing.T) {
			h := newFakeHost(t)
			h.reportsDropIns = reports
			h.manage(loIndex(t), "/run/systemd/network/10-netplan-eth0.network")
			want := filepath.Join(h.cfg.NetworkRunDir, "10-netplan-eth0.network.d", DropInName)

			a, err := Redirect(h.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if a.Kind != KindNetworkd || a.Path != want || !a.Written || a.Interface != "lo" || a.IfIndex != loIndex(t) ||
				a.NetworkFile != "/run/systemd/network/10-netplan-eth0.network" {
				t.Errorf("Applied = %+v", a)
			}
			if got := readFile(t, want); got != golden(t, "networkd.conf") {
				t.Errorf("drop-in:\n%s\nwant:\n%s", got, golden(t, "networkd.conf"))
			}
			fi, err := os.Stat(want)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644", fi.Mode().Perm())
			}
			if got := h.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
				t.Errorf("reloads %v, want [networkd]", got)
			}
			entries, _ := os.ReadDir(filepath.Dir(want))
			if len(entries) != 1 {
				t.Errorf("drop-in directory holds %d entries, want only ours (no temporary file left)", len(entries))
			}

			a, err = Redirect(h.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if a.Written || len(a.Reloaded) != 0 {
				t.Errorf("second Redirect: %+v, want nothing written or reloaded", a)
			}
			if got := h.takeReloads(); len(got) != 0 {
				t.Errorf("second Redirect reloaded %v", got)
			}

			r, err := Revert(h.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(r.Removed, []string{want}) || !slices.Equal(r.Reloaded, []string{KindNetworkd}) {
				t.Errorf("Revert = %+v", r)
			}
			mustNotExist(t, want)
			mustNotExist(t, filepath.Dir(want)) // the .d directory we created
			if got := h.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
				t.Errorf("reloads %v, want [networkd]", got)
			}

			r, err = Revert(h.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Removed)+len(r.Reloaded)+len(r.Foreign) != 0 {
				t.Errorf("second Revert = %+v, want nothing done", r)
			}
			if got := h.takeReloads(); len(got) != 0 {
				t.Errorf("second Revert reloaded %v", got)
			}
		})
	}
}

func TestRedirectKeepsOtherDropIns(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "/etc/systemd/network/eth0.network")
	dir := filepath.Join(h.cfg.NetworkRunDir, "eth0.network.d")
	other := filepath.Join(dir, "50-mtu.conf")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("[Link]\nMTUBytes=1400\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Redirect(h.cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := Revert(h.cfg); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, other); got != "[Link]\nMTUBytes=1400\n" {
		t.Errorf("someone else's drop-in changed: %q", got)
	}
	mustNotExist(t, filepath.Join(dir, DropInName))
}

func TestRedirectResolvedFallback(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "") // networkd knows the link but leaves it unmanaged
	want := filepath.Join(h.cfg.ResolvedDropInDir, DropInName)

	_, err := Redirect(h.cfg)
	if !errors.Is(err, ErrNoResolver) {
		t.Fatalf("without resolved: err = %v, want ErrNoResolver", err)
	}
	mustNotExist(t, want)
	if got := h.takeReloads(); len(got) != 0 {
		t.Errorf("reloads %v without a resolver", got)
	}

	if err := os.MkdirAll(h.cfg.ResolvedRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := Redirect(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Kind != KindResolved || a.Path != want || !a.Written || a.NetworkFile != "" {
		t.Errorf("Applied = %+v", a)
	}
	if got := readFile(t, want); got != golden(t, "resolved.conf") {
		t.Errorf("drop-in:\n%s\nwant:\n%s", got, golden(t, "resolved.conf"))
	}
	if got := h.takeReloads(); !slices.Equal(got, []string{KindResolved}) {
		t.Errorf("reloads %v, want [resolved]", got)
	}
	if _, err := Redirect(h.cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.takeReloads(); len(got) != 0 {
		t.Errorf("second Redirect reloaded %v", got)
	}

	r, err := Revert(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Removed, []string{want}) || !slices.Equal(r.Reloaded, []string{KindResolved}) {
		t.Errorf("Revert = %+v", r)
	}
	mustNotExist(t, want)
	if got := h.takeReloads(); !slices.Equal(got, []string{KindResolved}) {
		t.Errorf("reloads %v, want [resolved]", got)
	}
}

func TestRedirectNoStateFile(t *testing.T) {
	// networkd does not run at all: no state file for the link.
	h := newFakeHost(t)
	if err := os.MkdirAll(h.cfg.ResolvedRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := Redirect(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Kind != KindResolved {
		t.Errorf("Kind = %s, want resolved", a.Kind)
	}
}

// The default route moved to another link, or networkd took over a link:
// Redirect writes the new drop-in and removes the old one, reloading each
// daemon concerned once.
func TestRedirectMoves(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "/run/systemd/network/10-eth0.network")
	if _, err := Redirect(h.cfg); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(h.cfg.NetworkRunDir, "10-eth0.network.d", DropInName)
	h.takeReloads()

	h.manage(loIndex(t), "/run/systemd/network/10-eth1.network")
	a, err := Redirect(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Removed, []string{old}) || !a.Written {
		t.Errorf("Applied = %+v", a)
	}
	mustNotExist(t, old)
	if got := h.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
		t.Errorf("reloads %v, want one networkd reload", got)
	}

	// From resolved to networkd.
	h2 := newFakeHost(t)
	if err := os.MkdirAll(h2.cfg.ResolvedRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h2.manage(loIndex(t), "")
	if _, err := Redirect(h2.cfg); err != nil {
		t.Fatal(err)
	}
	h2.takeReloads()
	h2.manage(loIndex(t), "/run/systemd/network/10-eth0.network")
	a, err = Redirect(h2.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Kind != KindNetworkd || !slices.Equal(a.Removed, []string{filepath.Join(h2.cfg.ResolvedDropInDir, DropInName)}) {
		t.Errorf("Applied = %+v", a)
	}
	if got := h2.takeReloads(); !slices.Equal(got, []string{KindNetworkd, KindResolved}) {
		t.Errorf("reloads %v, want [networkd resolved]", got)
	}
}

// A crash between writing the drop-in and reloading networkd: networkd,
// where it reports its drop-ins, does not list ours; the next Redirect
// reloads although the file is in place. And a crash between removing it
// and reloading: the next Revert reloads although there is nothing to remove.
func TestCrashBetweenWriteAndReload(t *testing.T) {
	h := newFakeHost(t)
	h.reportsDropIns = true
	h.manage(loIndex(t), "/run/systemd/network/10-eth0.network")
	path := filepath.Join(h.cfg.NetworkRunDir, "10-eth0.network.d", DropInName)
	if _, err := writeIfDifferent(path, networkdDropIn(nodeListener.String())); err != nil {
		t.Fatal(err)
	}
	a, err := Redirect(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Written || !slices.Equal(a.Reloaded, []string{KindNetworkd}) {
		t.Errorf("Applied = %+v, want a reload without a write", a)
	}
	if got := h.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
		t.Errorf("reloads %v", got)
	}
	if _, err := Redirect(h.cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.takeReloads(); len(got) != 0 {
		t.Errorf("Redirect after networkd applied it reloaded %v", got)
	}

	// Removed, not reloaded: networkd still lists it.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	r, err := Revert(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != 0 || !slices.Equal(r.Reloaded, []string{KindNetworkd}) {
		t.Errorf("Revert = %+v, want a networkd reload", r)
	}
	if got := h.takeReloads(); !slices.Equal(got, []string{KindNetworkd}) {
		t.Errorf("reloads %v", got)
	}
	if _, err := Revert(h.cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.takeReloads(); len(got) != 0 {
		t.Errorf("second Revert reloaded %v", got)
	}
}

func TestForeignFileLeftAlone(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "/etc/systemd/network/eth0.network")
	path := filepath.Join(h.cfg.NetworkRunDir, "eth0.network.d", DropInName)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	const theirs = "[Network]\nDNS=192.0.2.53\n"
	if err := os.WriteFile(path, []byte(theirs), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Redirect(h.cfg); err == nil || !strings.Contains(err.Error(), "not written by localdns") {
		t.Errorf("Redirect over a foreign file: err = %v", err)
	}
	r, err := Revert(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Foreign, []string{path}) || len(r.Removed) != 0 || len(r.Reloaded) != 0 {
		t.Errorf("Revert = %+v", r)
	}
	if got := readFile(t, path); got != theirs {
		t.Errorf("foreign file changed: %q", got)
	}
	if got := h.takeReloads(); len(got) != 0 {
		t.Errorf("reloads %v", got)
	}
}

func TestReloadErrors(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "/etc/systemd/network/eth0.network")
	h.reloadErr = errors.New("Failed to reload network settings: Connection timed out")
	_, err := Redirect(h.cfg)
	if err == nil || !strings.Contains(err.Error(), "reload networkd") || !errors.Is(err, h.reloadErr) {
		t.Errorf("err = %v", err)
	}
	h.reloadErr = nil
	r, err := Revert(h.cfg)
	if err != nil || len(r.Removed) != 1 {
		t.Errorf("Revert after a failed Redirect = %+v, %v", r, err)
	}
}

func TestRedirectPort(t *testing.T) {
	h := newFakeHost(t)
	h.manage(loIndex(t), "/etc/systemd/network/eth0.network")
	h.cfg.Port = 5353
	a, err := Redirect(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, a.Path); !strings.Contains(got, "\nDNS=169.254.10.10:5353\n") {
		t.Errorf("drop-in:\n%s", got)
	}
	h.cfg.Port = 53
	if a, err = Redirect(h.cfg); err != nil || !a.Written {
		t.Fatalf("Redirect with another port: %+v, %v", a, err)
	}
	if got := readFile(t, a.Path); got != golden(t, "networkd.conf") {
		t.Errorf("drop-in:\n%s", got)
	}
}

func TestRedirectValidates(t *testing.T) {
	h := newFakeHost(t)
	h.cfg.Listener = netip.Addr{}
	if _, err := Redirect(h.cfg); err == nil {
		t.Error("no error without a listener")
	}
	h.cfg.Listener = nodeListener
	h.cfg.Interface = "no-such-link0"
	if _, err := Redirect(h.cfg); err == nil || !strings.Contains(err.Error(), "no-such-link0") {
		t.Errorf("unknown interface: err = %v", err)
	}
}

func TestReadLinkState(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "2")
	// As systemd 255 writes it (a ':' in a path is escaped as \x3a).
	state := `# This is private data. Do not parse.
ADMIN_STATE=configured
OPER_STATE=routable
NETWORK_FILE=/run/systemd/network/10-netplan-eth0.network
NETWORK_FILE_DROPINS="/run/systemd/network/10-netplan-eth0.network.d/70-localdns.conf:/etc/systemd/network/10-netplan-eth0.network.d/a\x3ab.conf"
DNS=169.254.10.10
`
	if err := os.WriteFile(p, []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := readLinkState(p)
	if err != nil {
		t.Fatal(err)
	}
	want := linkState{
		NetworkFile: "/run/systemd/network/10-netplan-eth0.network",
		DropIns: []string{
			"/run/systemd/network/10-netplan-eth0.network.d/70-localdns.conf",
			"/etc/systemd/network/10-netplan-eth0.network.d/a:b.conf",
		},
		HasDropIns: true,
	}
	if st.NetworkFile != want.NetworkFile || !slices.Equal(st.DropIns, want.DropIns) || !st.HasDropIns {
		t.Errorf("got %+v\nwant %+v", st, want)
	}

	st, err = readLinkState(filepath.Join(dir, "3"))
	if err != nil || st.NetworkFile != "" || st.HasDropIns {
		t.Errorf("missing file: %+v, %v", st, err)
	}
}
