package hostdns

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCommands puts networkctl and systemctl on PATH that append their
// arguments to a log (there is no systemd here to reload) and fail when the
// file "fail" exists.
func fakeCommands(t *testing.T) (log, fail string) {
	t.Helper()
	dir := t.TempDir()
	log, fail = filepath.Join(dir, "log"), filepath.Join(dir, "fail")
	for _, name := range []string{"networkctl", "systemctl"} {
		script := "#!/bin/sh\necho \"" + name + " $*\" >>" + log + "\n" +
			"if [ -e " + fail + " ]; then echo \"Failed to reload: Connection timed out\" >&2; exit 1; fi\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return log, fail
}

func TestReload(t *testing.T) {
	log, fail := fakeCommands(t)
	if err := Reload(KindNetworkd); err != nil {
		t.Fatal(err)
	}
	if err := Reload(KindResolved); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	want := "networkctl reload\nsystemctl try-reload-or-restart systemd-resolved.service\n"
	if string(got) != want {
		t.Errorf("ran:\n%s\nwant:\n%s", got, want)
	}

	if err := os.WriteFile(fail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = Reload(KindNetworkd)
	if err == nil || !strings.Contains(err.Error(), "networkctl reload") || !strings.Contains(err.Error(), "Connection timed out") {
		t.Errorf("failing networkctl: err = %v", err)
	}
	if err := Reload("dnsmasq"); err == nil {
		t.Error("unknown kind: no error")
	}
}
