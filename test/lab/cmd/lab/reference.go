package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/test/lab/topo"
	"github.com/localdns/localdns/test/lab/workload"
)

// The reference resolver is the machine's floor for the latency bars: a
// resolver that does nothing but answer the workload's names from memory,
// run where localdns runs (its CPU, a node-local address behind the same
// veths and conntrack bypass) and measured in the same rounds. What its p99
// is, the client, the kernel path and the hypervisor leave to any resolver on
// this machine; localdns cannot be judged below it. unbound serves as that
// reference: a mature C resolver with a single-threaded event loop and
// static local zones, independent of localdns's code and of Go.

// referenceTable is the nftables table with the reference's conntrack
// bypass, in the node namespace (gone with it when the lab is torn down).
const referenceTable = "lab_reference"

// startReference starts unbound on topo.ReferenceListener in the node
// namespace, on the servers' CPU, serving every name of the workload as the
// lab's CoreDNS pods and external resolver answer it.
func (l *lab) startReference() error {
	version, err := unboundVersion()
	if err != nil {
		return err
	}
	conf := filepath.Join(l.dir, "unbound.conf")
	var all []string
	for _, c := range []string{"cluster", "external"} {
		all = append(all, workload.Every(l.names[c])...)
	}
	if err := os.WriteFile(conf, []byte(unboundConf(topo.ReferenceListener, 53, l.rcvbuf, all)), 0o644); err != nil {
		return err
	}
	addr := topo.In(topo.Node, "ip", "addr", "add", topo.ReferenceListener+"/32", "dev", "lo")
	if err := topo.Run(addr...); err != nil {
		return fmt.Errorf("reference address: %w", err)
	}
	rules := filepath.Join(l.dir, "reference.nft")
	if err := os.WriteFile(rules, []byte(referenceNotrack(topo.ReferenceListener)), 0o644); err != nil {
		return err
	}
	if err := topo.Run(topo.In(topo.Node, "nft", "-f", rules)...); err != nil {
		return fmt.Errorf("reference conntrack bypass: %w", err)
	}
	if _, err := l.procs.start("unbound", topo.Node, l.pin.servers, "unbound", "-d", "-c", conf); err != nil {
		return err
	}
	if err := waitFor(10*time.Second, func() error {
		out, err := l.probe(topo.Pod1, topo.ReferenceListener, "svc1.default.svc.cluster.local", 1)
		if err != nil {
			return err
		}
		if f := strings.Fields(out); len(f) == 0 || f[0] != "NOERROR" {
			return fmt.Errorf("answered %q, want NOERROR", strings.TrimSpace(out))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("reference resolver (%s) on %s: %w", version, topo.ReferenceListener, err)
	}
	l.res.Settings.Reference = version
	logf("reference resolver %s up on %s", version, topo.ReferenceListener)
	return nil
}

func unboundVersion() (string, error) {
	out, err := exec.Command("unbound", "-V").Output()
	if err != nil {
		return "", fmt.Errorf("the reference resolver needs unbound (apt package unbound; or run with -reference=false): %w", err)
	}
	v := firstLine(out, nil)
	return strings.Replace(strings.ToLower(v), "version ", "unbound ", 1), nil
}

// unboundConf renders the reference's configuration: one thread on addr:port,
// the same receive buffer as localdns's socket, and static zones that answer
// every NOERROR query of the workload with an A record and every other name
// under them with NXDOMAIN, as the lab's servers do.
func unboundConf(addr string, port, rcvbuf int, queries []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	interface: %s
	port: %d
	do-ip6: no
	do-daemonize: no
	username: ""
	chroot: ""
	directory: ""
	pidfile: ""
	logfile: ""
	use-syslog: no
	verbosity: 0
	num-threads: 1
	so-rcvbuf: %d
	access-control: 0.0.0.0/0 allow
	module-config: "iterator"
	local-zone: "cluster.local." static
`, addr, port, rcvbuf)
	zones := map[string]bool{}
	seen := map[string]bool{}
	for _, q := range queries {
		if workload.Expected(q) != dns.RcodeSuccess || seen[q] {
			continue
		}
		seen[q] = true
		fmt.Fprintf(&b, "\tlocal-data: \"%s 30 IN A 10.0.%d.%d\"\n", q, len(seen)/250%250, len(seen)%250+1)
		if !dns.IsSubDomain("cluster.local.", q) {
			if i, end := dns.NextLabel(q, 0); !end {
				zones[q[i:]] = true
			}
		}
	}
	var zs []string
	for z := range zones {
		zs = append(zs, z)
	}
	sort.Strings(zs)
	for _, z := range zs {
		fmt.Fprintf(&b, "\tlocal-zone: \"%s\" static\n", z)
	}
	return b.String()
}

// referenceNotrack is the conntrack bypass localdns installs for its
// listeners (internal/netsetup), for the reference's address: queries in,
// and the replies out, skip conntrack.
func referenceNotrack(addr string) string {
	return fmt.Sprintf(`table inet %[1]s {
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip daddr %[2]s udp dport 53 notrack
		ip daddr %[2]s tcp dport 53 notrack
	}
	chain output {
		type filter hook output priority raw; policy accept;
		ip saddr %[2]s udp sport 53 notrack
		ip saddr %[2]s tcp sport 53 notrack
	}
}
`, referenceTable, addr)
}
