// Package plugins is localdns's CoreDNS build: it compiles in exactly the
// plugins localdns uses (stock and our own) and sets the directive order,
// which is the order a query walks the chain in every server block.
//
// Importing this package is the only place the build is chosen; the binary,
// the tests and the benchmarks all import it so they run the same CoreDNS.
package plugins

import (
	"fmt"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	// Stock CoreDNS plugins we use. Nothing else is compiled in.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/multisocket"
	_ "github.com/coredns/coredns/plugin/nsid"
	_ "github.com/coredns/coredns/plugin/pprof"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// Directives is the chain order. Reasons for the places that matter:
//   - multisocket, reload, nsid, bind, ready, health, pprof, prometheus:
//     server set-up directives; prometheus before errors/log so every
//     answer, including junk and cache hits, is counted. pprof is never in
//     a rendered profile: an operator adds it to a Corefile (`localdns run
//     --corefile`) to profile a node, as with stock CoreDNS.
//   - frontend (ours) right after bind: it reads the bound addresses, and its
//     startup callback must run before loop's, which reads the block's port.
//   - errors, log: around everything that answers.
//   - junk (ours) and template before the caches: search-path junk gets its
//     synthesized NXDOMAIN at once and is never stored next to real answers.
//   - nodecache (ours) or cache (stock, selectable for comparison) before
//     hosts/loop and the forwarders, so only misses go upstream.
//   - clientbudget (ours) right after the caches: it sees exactly the
//     queries that go upstream, and limits them per client.
//   - loop right before the forwarders: it sends its probe through them.
//   - upstream (ours: cluster/VNet split with failover) or forward (stock).
//
// Our plugins are imported from files next to this one, one per plugin.
//   - whoami last: it only answers the probe zone, which has no forward.
var Directives = []string{
	"multisocket",
	"reload",
	"nsid",
	"bind",
	"frontend",
	"ready",
	"health",
	"pprof",
	"prometheus",
	"errors",
	"log",
	"junk",
	"template",
	"nodecache",
	"cache",
	"clientbudget",
	"hosts",
	"loop",
	"upstream",
	"forward",
	"whoami",
}

func init() {
	// caddy and dnsserver print the addresses they bind to stdout; with the
	// frontend those are parked ports, so localdns logs the real ones itself.
	caddy.Quiet, dnsserver.Quiet = true, true
	if err := dnsserver.SetDirectives(Directives); err != nil {
		panic(fmt.Sprintf("localdns plugin order: %v", err))
	}
}

// List returns the compiled-in plugins in chain order.
func List() []string { return append([]string(nil), Directives...) }
