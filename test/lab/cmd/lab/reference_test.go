package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/internal/testbin"
	"github.com/localdns/localdns/internal/testdns"
	"github.com/localdns/localdns/test/lab/workload"
)

// TestReferenceAnswersLikeTheLab runs unbound on loopback with the
// reference's configuration and checks that it answers every query of the
// workload with the rcode the lab expects (workload.Expected), so that the
// reference phases are cache-hit traffic a correct resolver would give.
func TestReferenceAnswersLikeTheLab(t *testing.T) {
	if _, err := exec.LookPath("unbound"); err != nil {
		t.Skip("unbound not installed (apt package unbound; .ci/deps installs it)")
	}
	names := map[string][]string{
		"cluster":  workload.Names(workload.Cluster, 300, 1),
		"external": workload.Names(workload.External, 300, 2),
	}
	var queries []string
	for _, c := range []string{"cluster", "external"} {
		queries = append(queries, workload.Every(names[c])...)
	}
	addr := startUnbound(t, queries)
	for i, q := range queries {
		if i%7 != 0 && workload.Expected(q) != dns.RcodeSuccess {
			continue // every NOERROR name, a sample of the NXDOMAIN ones
		}
		r := testdns.Query(t, "udp", addr, q, dns.TypeA)
		if want := workload.Expected(q); r.Rcode != want {
			t.Fatalf("%s: rcode %s, want %s", q, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
		}
		if r.Rcode == dns.RcodeSuccess && len(r.Answer) != 1 {
			t.Fatalf("%s: %d answers, want 1", q, len(r.Answer))
		}
	}
}

// startUnbound runs unbound with the reference's configuration on a free
// loopback port and returns its address once it answers. A port another
// test took between the check and unbound's bind (unbound binds UDP and
// TCP) makes it exit at once; then it tries another port.
func startUnbound(t *testing.T, queries []string) string {
	t.Helper()
	for try := 0; ; try++ {
		port := testbin.FreePorts(t, 1)[0]
		conf := filepath.Join(t.TempDir(), "unbound.conf")
		if err := os.WriteFile(conf, []byte(unboundConf("127.0.0.1", port, 1<<20, queries)), 0o644); err != nil {
			t.Fatal(err)
		}
		if try == 0 {
			if out, err := exec.Command("unbound-checkconf", conf).CombinedOutput(); err != nil {
				t.Fatalf("unbound-checkconf: %v: %s", err, out)
			}
		}
		cmd := exec.Command("unbound", "-d", "-c", conf)
		var log testbin.Log
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := testdns.Exchange("udp", addr, "svc1.default.svc.cluster.local", dns.TypeA)
			if err == nil {
				return addr
			}
			select {
			case <-exited:
				if try < 3 {
					t.Logf("unbound exited on port %d, trying another: %s", port, log.String())
				} else {
					t.Fatalf("unbound exited: %s", log.String())
				}
			default:
				if time.Now().After(deadline) {
					t.Fatalf("unbound never answered: %v; log: %s", err, log.String())
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			break
		}
	}
}
