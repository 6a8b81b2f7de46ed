package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
)

// TestPprofInACorefile: an operator profiling a node adds `pprof` to a
// Corefile served with `localdns run --corefile`, as with stock CoreDNS, and
// gets a CPU profile of the running daemon.
func TestPprofInACorefile(t *testing.T) {
	up := testdns.Start(t, "192.0.2.30")
	ports := testbin.FreePorts(t, 2)
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	pprofAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	corefile := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    frontend
    pprof %s
    nodecache
    forward . %s
}
health-check.localdns.local:%d {
    bind 127.0.0.1
    frontend
    whoami
}
`, ports[0], pprofAddr, up.Addr, ports[0])
	path := filepath.Join(t.TempDir(), "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, listen, "--corefile", path)
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + pprofAddr + "/debug/pprof/profile?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || len(body) == 0 || strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("CPU profile: %s, %d bytes, %s", resp.Status, len(body), resp.Header.Get("Content-Type"))
	}
}
