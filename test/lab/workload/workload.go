// Package workload generates the query mix of the lab: the names a pod asks
// for, drawn with a skewed (Zipf) popularity, expanded the way a pod's
// resolver expands them under Kubernetes' ndots:5 search path, and written as
// dnsperf data files.
//
// Two name classes are measured separately, as in the seed experiment:
//
//   - cluster: services in namespaces. A pod in "default" asks for a service
//     of its own namespace by its short name (svc7 -> svc7.default.svc.cluster.local,
//     one query) and for other namespaces' services as svc7.ns3, which the
//     search path turns into svc7.ns3.default.svc.cluster.local (NXDOMAIN)
//     and then svc7.ns3.svc.cluster.local (the answer).
//   - external: names outside the cluster (api12.example.com). With fewer
//     than five dots every search suffix is tried first, so a pod sends
//     api12.example.com.default.svc.cluster.local, .svc.cluster.local and
//     .cluster.local (all NXDOMAIN) before api12.example.com itself.
//
// Only A queries are generated (a dual-stack pod also sends AAAA; that would
// double the keys, not change the comparison).
package workload

import (
	"bufio"
	"fmt"
	"io"
	"math/rand"
	"regexp"
	"strings"

	"github.com/miekg/dns"
)

// Class is a name class measured on its own.
type Class string

// The two classes.
const (
	Cluster  Class = "cluster"
	External Class = "external"
)

// PodNamespace is the namespace the client pods live in; it heads their
// search path.
const PodNamespace = "default"

// SearchPath is the search list of a ClusterFirst pod in PodNamespace.
var SearchPath = []string{PodNamespace + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}

// Ndots is the kubelet's ndots for ClusterFirst pods.
const Ndots = 5

// Expand returns the queries a pod's resolver sends, in order, for a name as
// the application wrote it, until the first one that can succeed: the search
// suffixes first when the name has fewer than Ndots dots, then the name
// itself. For a service name the search stops at the suffix that exists.
func Expand(name string) []string {
	name = strings.TrimSuffix(name, ".")
	if strings.Count(name, ".") >= Ndots {
		return []string{dns.Fqdn(name)}
	}
	var out []string
	for _, s := range SearchPath {
		q := dns.Fqdn(name + "." + s)
		out = append(out, q)
		if Expected(q) == dns.RcodeSuccess {
			return out
		}
	}
	return append(out, dns.Fqdn(name))
}

// serviceName matches the names the lab's cluster CoreDNS answers: svcN in
// the default namespace or in nsM.
var serviceName = regexp.MustCompile(`^svc[0-9]+\.(default|ns[0-9]+)\.svc\.cluster\.local\.$`)

// Expected is the rcode a correct resolver gives for a query the workload
// sends: NOERROR for services and external names, NXDOMAIN for every other
// name in cluster.local (the search-path misses).
func Expected(qname string) int {
	qname = strings.ToLower(dns.Fqdn(qname))
	if !dns.IsSubDomain("cluster.local.", qname) {
		return dns.RcodeSuccess
	}
	if serviceName.MatchString(qname) {
		return dns.RcodeSuccess
	}
	return dns.RcodeNameError
}

// Names returns n application-level names of class c, ranked: the first is
// the most popular. Cluster names: services 0..perNS-1 in "default" and in
// ns1..nsK, as a pod would write them. External names: hosts under a few
// example domains.
func Names(c Class, n int, seed int64) []string {
	names := make([]string, 0, n)
	switch c {
	case Cluster:
		const perNS = 150
		for i := 0; len(names) < n; i++ {
			ns, svc := i/perNS, i%perNS
			if ns == 0 {
				names = append(names, fmt.Sprintf("svc%d", svc))
			} else {
				names = append(names, fmt.Sprintf("svc%d.ns%d", svc, ns))
			}
		}
	case External:
		prefixes := []string{"api", "cdn", "login", "registry", "storage", "queue", "metrics", "auth"}
		tlds := []string{"example.com", "example.net", "example.org"}
		for i := 0; len(names) < n; i++ {
			names = append(names, fmt.Sprintf("%s%d.%s", prefixes[i%len(prefixes)], i/len(prefixes), tlds[(i/7)%len(tlds)]))
		}
	default:
		panic("workload: unknown class " + string(c))
	}
	// Popularity rank independent of the generation order.
	r := rand.New(rand.NewSource(seed))
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	return names
}

// ZipfS is the exponent of the popularity distribution. Web and DNS name
// popularity is commonly modelled with s close to 1; math/rand needs s > 1.
const ZipfS = 1.1

// Sample draws lookups names (application lookups, each expanded into its
// queries) with Zipf popularity over names and returns the queries in order.
func Sample(names []string, lookups int, seed int64) []string {
	r := rand.New(rand.NewSource(seed))
	z := rand.NewZipf(r, ZipfS, 1, uint64(len(names)-1))
	var out []string
	for range lookups {
		out = append(out, Expand(names[z.Uint64()])...)
	}
	return out
}

// Every returns the queries of one lookup of each name: the warm-up that
// makes every key of the workload "seen before".
func Every(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, Expand(n)...)
	}
	return out
}

// WriteData writes queries as a dnsperf data file (one "name A" per line).
func WriteData(w io.Writer, queries []string) error {
	bw := bufio.NewWriter(w)
	for _, q := range queries {
		if _, err := fmt.Fprintf(bw, "%s A\n", q); err != nil {
			return fmt.Errorf("write dnsperf data: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write dnsperf data: %w", err)
	}
	return nil
}
