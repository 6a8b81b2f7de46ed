package hostdns

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const (
	redirected = "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n" +
		"nameserver 169.254.10.10\nsearch reddog.microsoft.com\n"
	restored = "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n" +
		"nameserver 10.224.0.2\nnameserver 10.224.0.3\nsearch reddog.microsoft.com\n"
)

func writeResolvConf(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Error(err)
	}
}

func TestWaitListenerGone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	ctx := context.Background()

	// Missing file, and a file without the listener: at once.
	start := time.Now()
	if err := WaitListenerGone(ctx, path, nodeListener, 5*time.Second); err != nil {
		t.Errorf("missing file: %v", err)
	}
	writeResolvConf(t, path, restored)
	if err := WaitListenerGone(ctx, path, nodeListener, 5*time.Second); err != nil {
		t.Errorf("restored file: %v", err)
	}
	if d := time.Since(start); d >= PollInterval {
		t.Errorf("took %v without the listener listed", d)
	}

	// Listed until resolved rewrites the file 600 ms later.
	writeResolvConf(t, path, redirected)
	start = time.Now()
	go func() {
		time.Sleep(600 * time.Millisecond)
		writeResolvConf(t, path, restored)
	}()
	if err := WaitListenerGone(ctx, path, nodeListener, 5*time.Second); err != nil {
		t.Errorf("rewritten file: %v", err)
	}
	if d := time.Since(start); d < 600*time.Millisecond || d > 600*time.Millisecond+3*PollInterval {
		t.Errorf("returned after %v, want 600 ms plus at most a poll interval or so", d)
	}

	// Never rewritten: ErrStillListed at the timeout.
	writeResolvConf(t, path, redirected)
	start = time.Now()
	err := WaitListenerGone(ctx, path, nodeListener, 600*time.Millisecond)
	if !errors.Is(err, ErrStillListed) {
		t.Errorf("err = %v, want ErrStillListed", err)
	}
	if d := time.Since(start); d < 600*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("gave up after %v, want 600 ms", d)
	}

	// Cancelled by the caller.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, cancel)
	if err := WaitListenerGone(cctx, path, nodeListener, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
}

func TestListsNameserver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	for _, c := range []struct {
		content string
		want    bool
	}{
		{"nameserver 169.254.10.10\n", true},
		{"nameserver ::ffff:169.254.10.10\n", true},
		{"  nameserver\t169.254.10.10  \n", true},
		{"# nameserver 169.254.10.10\nnameserver 10.0.0.2\n", false},
		{"nameserver 169.254.10.11\n", false},
		{"search 169.254.10.10\n", false},
		{"", false},
	} {
		writeResolvConf(t, path, c.content)
		got, err := listsNameserver(path, nodeListener)
		if err != nil || got != c.want {
			t.Errorf("%q: %v, %v; want %v", c.content, got, err, c.want)
		}
	}
}
