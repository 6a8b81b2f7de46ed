package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// problem is one expected problem: the exact field path and a piece of the
// reason.
type problem struct{ path, reason string }

// TestValidation is the table of every rule: AKS's own (root to
// ClusterCoreDNS, cluster domain to VnetDNS, ForceTCP with Verify, unique
// zones) and every kind of malformed value. Each case lists every problem
// the profile has, by exact path: a problem missing, extra or at the wrong
// path fails the case.
func TestValidation(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []problem
	}{
		// AKS rules.
		{"vnet root to ClusterCoreDNS",
			`vnetDNSOverrides: {".": {forwardDestination: ClusterCoreDNS}}`,
			[]problem{{`vnetDNSOverrides.".".forwardDestination`, `root zone "." may not forward to ClusterCoreDNS`}}},
		{"vnet root to ClusterCoreDNS, CLI spelling in the wrapper",
			`{"localDnsProfile": {"vnetDnsOverrides": {".": {"forwardDestination": "ClusterCoreDNS"}}}}`,
			[]problem{{`localDnsProfile.vnetDnsOverrides.".".forwardDestination`, `may not forward to ClusterCoreDNS`}}},
		{"kube root to VnetDNS is allowed",
			`kubeDNSOverrides: {".": {forwardDestination: VnetDNS}}`, nil},
		{"kube cluster.local to VnetDNS",
			`kubeDNSOverrides: {".": {}, cluster.local: {forwardDestination: VnetDNS}}`,
			[]problem{{`kubeDNSOverrides."cluster.local".forwardDestination`, "cluster domain cluster.local may never forward to VnetDNS"}}},
		{"vnet cluster.local to VnetDNS",
			`vnetDNSOverrides: {".": {}, "Cluster.Local.": {forwardDestination: VnetDNS}}`,
			[]problem{{`vnetDNSOverrides."Cluster.Local.".forwardDestination`, "may never forward to VnetDNS"}}},
		{"subzone of cluster.local to VnetDNS",
			`kubeDNSOverrides: {".": {}, svc.cluster.local: {forwardDestination: VnetDNS}}`,
			[]problem{{`kubeDNSOverrides."svc.cluster.local".forwardDestination`, "may never forward to VnetDNS"}}},
		{"custom cluster domain to VnetDNS",
			"clusterDomain: corp.k8s\nvnetDNSOverrides: {\".\": {}, corp.k8s: {forwardDestination: VnetDNS}, ns1.svc.Corp.K8s: {forwardDestination: VnetDNS}}",
			[]problem{
				{`vnetDNSOverrides."corp.k8s".forwardDestination`, "cluster domain corp.k8s may never"},
				{`vnetDNSOverrides."ns1.svc.Corp.K8s".forwardDestination`, "cluster domain corp.k8s may never"},
			}},
		{"cluster.local to VnetDNS even with a custom cluster domain",
			"clusterDomain: corp.k8s\nkubeDNSOverrides: {\".\": {}, cluster.local: {forwardDestination: VnetDNS}}",
			[]problem{{`kubeDNSOverrides."cluster.local".forwardDestination`, "cluster domain cluster.local"}}},
		{"a zone that only ends like cluster.local may go to VnetDNS",
			`kubeDNSOverrides: {".": {}, notcluster.local: {forwardDestination: VnetDNS}}`, nil},
		{"ForceTCP with serveStale Verify",
			`kubeDNSOverrides: {".": {protocol: ForceTCP, serveStale: Verify}}`,
			[]problem{{`kubeDNSOverrides.".".protocol`, "ForceTCP cannot be combined with serveStale Verify"}}},
		{"ForceTCP with Immediate and PreferUDP with Verify are fine",
			`kubeDNSOverrides: {".": {protocol: ForceTCP, serveStale: Immediate}, corp.example: {serveStale: Verify}}`, nil},
		{"duplicate zones after normalisation",
			`kubeDNSOverrides: {".": {}, Cluster.Local: {}, cluster.local.: {}}`,
			[]problem{{`kubeDNSOverrides."cluster.local."`, `duplicate zone: same as "Cluster.Local"`}}},
		{"duplicate root",
			`vnetDNSOverrides: {".": {}, " . ": {}}`,
			[]problem{{`vnetDNSOverrides."."`, `duplicate zone: same as " . "`}}},
		{"override map without the root zone",
			`kubeDNSOverrides: {cluster.local: {}}`,
			[]problem{{"kubeDNSOverrides", `must have the root zone "."`}}},
		{"empty override map",
			`vnetDnsOverrides: {}`,
			[]problem{{"vnetDnsOverrides", `must have at least the zone "."`}}},
		{"override map given in both spellings",
			`{"kubeDNSOverrides": {".": {}}, "kubeDnsOverrides": {".": {}}}`,
			[]problem{{"kubeDnsOverrides", "given twice"}}},
		{"override map not a mapping",
			`kubeDNSOverrides: [a, b]`,
			[]problem{{"kubeDNSOverrides", "must be a mapping of zone to settings"}}},
		// AKS's node-level hosts plugin fields.
		{"refresh interval below AKS's minimum",
			`hostsPluginRefreshIntervalInSeconds: 4`,
			[]problem{{"hostsPluginRefreshIntervalInSeconds", "must be between 5 and 86400"}}},
		{"refresh interval not a number",
			`{"localDNSProfile": {"hostsPluginRefreshIntervalInSeconds": "15m"}}`,
			[]problem{{"localDNSProfile.hostsPluginRefreshIntervalInSeconds", "must be a whole number"}}},
		{"enableHostsPlugin not a bool",
			`enableHostsPlugin: yes please`,
			[]problem{{"enableHostsPlugin", "must be true or false"}}},
		{"bad critical names, checked even with the plugin off",
			`criticalFqdns: [mcr.microsoft.com, "bad name", ".", 7]`,
			[]problem{
				{"criticalFqdns[1]", "character other than"},
				{"criticalFqdns[2]", "must be a name below the root"},
				{"criticalFqdns[3]", "must be a non-empty string"},
			}},
		{"criticalFqdns not a list",
			`criticalFqdns: {a: b}`,
			[]problem{{"criticalFqdns", "must be a list of strings"}}},
		{"hosts plugin with the stock cache",
			"enableHostsPlugin: true\ncache: {engine: coredns}",
			[]problem{{"enableHostsPlugin", "needs cache.engine localdns"}}},
		// AKS's per-override health fields.
		{"healthCheck without duration",
			`kubeDNSOverrides: {".": {healthCheck: {noRec: true}}}`,
			[]problem{{`kubeDNSOverrides.".".healthCheck.duration`, "is required"}}},
		{"healthCheck duration malformed and out of bounds",
			`kubeDNSOverrides: {".": {healthCheck: {duration: soon}}, a.example: {healthCheck: {duration: 10ms}}, b.example: {healthCheck: {duration: 2h}}}`,
			[]problem{
				{`kubeDNSOverrides.".".healthCheck.duration`, "must be a duration"},
				{`kubeDNSOverrides."a.example".healthCheck.duration`, "must be between 100ms and 1h0m0s"},
				{`kubeDNSOverrides."b.example".healthCheck.duration`, "must be between 100ms and 1h0m0s"},
			}},
		{"healthCheck bad fields",
			`vnetDnsOverrides: {".": {healthCheck: {duration: 1s, noRec: 1, domain: "x y", interval: 1s}}}`,
			[]problem{
				{`vnetDnsOverrides.".".healthCheck.domain`, "character other than"},
				{`vnetDnsOverrides.".".healthCheck.interval`, "unknown field"},
				{`vnetDnsOverrides.".".healthCheck.noRec`, "must be true or false"},
			}},
		{"healthCheck not a mapping",
			`kubeDNSOverrides: {".": {healthCheck: 1s}}`,
			[]problem{{`kubeDNSOverrides.".".healthCheck`, "must be a mapping"}}},
		{"failfast not a bool",
			`kubeDNSOverrides: {".": {failfastAllUnhealthyUpstreams: "no"}}`,
			[]problem{{`kubeDNSOverrides.".".failfastAllUnhealthyUpstreams`, "must be true or false"}}},
		{"zone settings not a mapping",
			`kubeDNSOverrides: {".": Immediate}`,
			[]problem{{`kubeDNSOverrides."."`, "must be a mapping"}}},

		{"the probe zone is reserved",
			`kubeDNSOverrides: {".": {}, Health-Check.LocalDNS.local.: {}}`,
			[]problem{{`kubeDNSOverrides."Health-Check.LocalDNS.local."`, "is reserved: localdns answers health-check.localdns.local itself"}}},
		{"below the probe zone is reserved",
			`vnetDNSOverrides: {".": {}, x.health-check.localdns.local: {}}`,
			[]problem{{`vnetDNSOverrides."x.health-check.localdns.local"`, "is reserved"}}},
		{"the probe zone's parent is a zone like any other",
			`vnetDNSOverrides: {".": {}, localdns.local: {}}`, nil},

		// Malformed values.
		{"bad listener IP", "listeners: {node: 169.254.10.300}",
			[]problem{{"listeners.node", "must be an IP address"}}},
		{"listener with a prefix", "listeners: {cluster: 169.254.10.11/32}",
			[]problem{{"listeners.cluster", "must be an IP address"}}},
		{"unspecified listener", "listeners: {node: 0.0.0.0}",
			[]problem{{"listeners.node", "unicast address"}}},
		{"listener not a string", "listeners: {node: 17}",
			[]problem{{"listeners.node", "must be an IP address"}}},
		{"same node and cluster listener", "listeners: {node: 169.254.10.11}",
			[]problem{{"listeners.cluster", "must differ from listeners.node"}}},
		{"listeners of two families", "listeners: {cluster: fd00::11}",
			[]problem{{"listeners.cluster", "same address family"}}},
		{"bad upstream IP", "clusterDNS: [10.0.0.300]",
			[]problem{{"clusterDNS[0]", "must be ip or ip:port"}, {"clusterDNS", "at least one server"}}},
		{"upstream host name", "vnetDNS: [168.63.129.16, dns.example.com]",
			[]problem{{"vnetDNS[1]", "must be ip or ip:port"}}},
		{"upstream port 0", "clusterDNS: [\"10.0.0.10:0\"]",
			[]problem{{"clusterDNS[0]", "not a usable server address"}, {"clusterDNS", "at least one server"}}},
		{"upstream port 70000", "clusterDNS: [10.0.0.10, \"10.0.0.11:70000\"]",
			[]problem{{"clusterDNS[1]", "must be ip or ip:port"}}},
		{"empty upstream list", "vnetDNS: []",
			[]problem{{"vnetDNS", "must list at least one server"}}},
		{"upstream list of numbers", "clusterDNS: [53]",
			[]problem{{"clusterDNS[0]", "non-empty string"}, {"clusterDNS", "at least one server"}}},
		{"port 0", "port: 0", []problem{{"port", "must be between 1 and 65535"}}},
		{"port 70000", "port: 70000", []problem{{"port", "must be between 1 and 65535"}}},
		{"readyPort 70000", "readyPort: 70000", []problem{{"readyPort", "must be between 1 and 65535"}}},
		{"readyPort is the DNS port", "readyPort: 53", []problem{{"readyPort", "must differ from port"}}},
		{"port not a number", `port: "53"`, []problem{{"port", "must be a whole number"}}},
		{"port a fraction", `port: 53.5`, []problem{{"port", "must be a whole number"}}},
		{"bad zone label", `kubeDNSOverrides: {".": {}, "corp!.example": {}}`,
			[]problem{{`kubeDNSOverrides."corp!.example"`, `label "corp!" has a character`}}},
		{"empty zone label", `vnetDNSOverrides: {".": {}, "a..b": {}}`,
			[]problem{{`vnetDNSOverrides."a..b"`, "each label must be 1 to 63 characters"}}},
		{"zone label too long", `vnetDNSOverrides: {".": {}, "` + strings.Repeat("x", 64) + `.example": {}}`,
			[]problem{{`vnetDNSOverrides."` + strings.Repeat("x", 64) + `.example"`, "1 to 63 characters"}}},
		{"bad cluster domain", "clusterDomain: cluster..local",
			[]problem{{"clusterDomain", "1 to 63 characters"}}},
		{"root as cluster domain", `clusterDomain: "."`,
			[]problem{{"clusterDomain", "below the root"}}},
		{"bad mode", "mode: Sometimes", []problem{{"mode", "must be one of Required, Preferred, Disabled"}}},
		{"bad state", `{"localDnsProfile": {"state": "Running"}}`, []problem{{"localDnsProfile.state", "must be one of Enabled, Disabled"}}},
		{"bad serveStale", `kubeDNSOverrides: {".": {serveStale: Always}}`,
			[]problem{{`kubeDNSOverrides.".".serveStale`, "must be one of Verify, Immediate, Disable"}}},
		{"bad protocol", `kubeDNSOverrides: {".": {protocol: UDP}}`,
			[]problem{{`kubeDNSOverrides.".".protocol`, "must be one of PreferUDP, ForceTCP"}}},
		{"bad forwardDestination", `kubeDNSOverrides: {".": {forwardDestination: Azure}}`,
			[]problem{{`kubeDNSOverrides.".".forwardDestination`, "must be one of ClusterCoreDNS, VnetDNS"}}},
		{"bad forwardPolicy", `vnetDNSOverrides: {".": {forwardPolicy: LeastLoaded}}`,
			[]problem{{`vnetDNSOverrides.".".forwardPolicy`, "must be one of Sequential, RoundRobin, Random"}}},
		{"bad queryLogging", `vnetDNSOverrides: {".": {queryLogging: Debug}}`,
			[]problem{{`vnetDNSOverrides.".".queryLogging`, "must be one of Error, Log"}}},
		{"enum not a string", `vnetDNSOverrides: {".": {queryLogging: 1}}`,
			[]problem{{`vnetDNSOverrides.".".queryLogging`, "must be one of"}}},
		{"bad cache engine", "cache: {engine: redis}",
			[]problem{{"cache.engine", "must be one of localdns, coredns"}}},
		{"maxConcurrent negative", `kubeDNSOverrides: {".": {maxConcurrent: -1}}`,
			[]problem{{`kubeDNSOverrides.".".maxConcurrent`, "must be between 0 and 1000000"}}},
		{"maxConcurrent too large", `kubeDNSOverrides: {".": {maxConcurrent: 2000000}}`,
			[]problem{{`kubeDNSOverrides.".".maxConcurrent`, "must be between 0 and 1000000"}}},
		{"maxConcurrent huge", `kubeDNSOverrides: {".": {maxConcurrent: 18446744073709551615}}`,
			[]problem{{`kubeDNSOverrides.".".maxConcurrent`, "must be between"}}},
		{"cacheDurationInSeconds too large", `kubeDNSOverrides: {".": {cacheDurationInSeconds: 86401}}`,
			[]problem{{`kubeDNSOverrides.".".cacheDurationInSeconds`, "must be between 0 and 86400"}}},
		{"serveStaleDurationInSeconds negative", `vnetDNSOverrides: {".": {serveStaleDurationInSeconds: -5}}`,
			[]problem{{`vnetDNSOverrides.".".serveStaleDurationInSeconds`, "must be between 0 and 86400"}}},
		{"number as a string", `{"kubeDnsOverrides": {".": {"maxConcurrent": "1000"}}}`,
			[]problem{{`kubeDnsOverrides.".".maxConcurrent`, "must be a whole number"}}},
		{"number as a bool", `kubeDNSOverrides: {".": {cacheDurationInSeconds: true}}`,
			[]problem{{`kubeDNSOverrides.".".cacheDurationInSeconds`, "must be a whole number"}}},
		{"fractional number", `kubeDNSOverrides: {".": {cacheDurationInSeconds: 1.5}}`,
			[]problem{{`kubeDNSOverrides.".".cacheDurationInSeconds`, "must be a whole number"}}},
		{"unknown field at top level", "modee: Required", []problem{{"modee", "unknown field"}}},
		{"unknown field YAML reads as a number", "53: true", []problem{{"53", "unknown field"}}},
		{"unknown field in the wrapper", `{"localDNSProfile": {"mode": "Required", "enableHosts": true}}`,
			[]problem{{"localDNSProfile.enableHosts", "unknown field"}}},
		{"unknown field in a zone", `kubeDNSOverrides: {".": {cacheDuration: 60}}`,
			[]problem{{`kubeDNSOverrides.".".cacheDuration`, "unknown field"}}},
		{"unknown field in a zone, in the wrapper", `{"localDnsProfile": {"kubeDnsOverrides": {"cluster.local": {"ttl": 5}}}}`,
			[]problem{{`localDnsProfile.kubeDnsOverrides."cluster.local".ttl`, "unknown field"},
				{"localDnsProfile.kubeDnsOverrides", `must have the root zone "."`}}},
		{"unknown field in listeners", "listeners: {pod: 169.254.10.12}",
			[]problem{{"listeners.pod", "unknown field"}}},
		{"unknown field in cache", "cache: {size: 10000}", []problem{{"cache.size", "unknown field"}}},
		{"unknown field in network", "network: {iptables: true}", []problem{{"network.iptables", "unknown field"}}},
		{"section not a mapping", "network: true", []problem{{"network", "must be a mapping"}}},
		{"bad byte size", "cache: {maxMemory: 64MB}", []problem{{"cache.maxMemory", "must be a byte count"}}},
		{"byte size too small", "cache: {maxMemory: 1024}", []problem{{"cache.maxMemory", "must be between 1Mi and 64Gi"}}},
		{"byte size too large", "cache: {maxMemory: 65Gi}", []problem{{"cache.maxMemory", "must be between 1Mi and 64Gi"}}},
		{"relative snapshot path", "cache: {snapshot: var/lib/localdns/cache}",
			[]problem{{"cache.snapshot", "must be an absolute path"}}},
		{"snapshot not a string", "cache: {snapshot: [a]}",
			[]problem{{"cache.snapshot", "must be a file path or empty"}}},
		{"node listener as cluster upstream (loop)", "clusterDNS: [169.254.10.10]",
			[]problem{{"clusterDNS[0]", "is a localdns listener: forwarding to it would loop"}}},
		{"cluster listener as VNet upstream (loop)", "vnetDNS: [168.63.129.16, \"169.254.10.11:53\"]",
			[]problem{{"vnetDNS[1]", "would loop"}}},
		{"listener address on another port is not a loop", "vnetDNS: [\"169.254.10.11:5353\"]", nil},
		{"loop on a custom port", "port: 1053\nlisteners: {node: 127.0.0.1, cluster: 127.0.0.2}\nclusterDNS: [\"127.0.0.2:1053\"]",
			[]problem{{"clusterDNS[0]", "would loop"}}},
		{"bad duration", `network: {reconcileInterval: "30"}`,
			[]problem{{"network.reconcileInterval", `must be a duration such as "30s"`}}},
		{"duration as a number", `network: {reconcileInterval: 30}`,
			[]problem{{"network.reconcileInterval", `must be a duration`}}},
		{"duration too short", `network: {reconcileInterval: 500ms}`,
			[]problem{{"network.reconcileInterval", "between 1s and 1h"}}},
		{"duration too long", `network: {reconcileInterval: 2h}`,
			[]problem{{"network.reconcileInterval", "between 1s and 1h"}}},
		{"bad bool", `network: {manage: "yes"}`, []problem{{"network.manage", "must be true or false"}}},
		{"bad failover bool", `failoverToVNetDNS: 1`, []problem{{"failoverToVNetDNS", "must be true or false"}}},
		{"metrics bare port", `metrics: ":9253"`,
			[]problem{{"metrics", "a bare :port would bind every address"}}},
		{"metrics host name", `metrics: "localhost:9253"`, []problem{{"metrics", "must be ip:port"}}},
		{"metrics port 0", `metrics: "127.0.0.1:0"`, []problem{{"metrics", "port must be between 1 and 65535"}}},
		{"metrics on the ready endpoint", `metrics: "169.254.10.10:8181"`,
			[]problem{{"metrics", "collides with the ready endpoint on 169.254.10.10:8181"}}},
		{"metrics on all addresses at the ready port", `metrics: "0.0.0.0:8181"`,
			[]problem{{"metrics", "ready endpoint on 169.254.10.10:8181"}, {"metrics", "ready endpoint on 169.254.10.11:8181"}}},
		{"metrics on the DNS port", `metrics: "169.254.10.11:53"`,
			[]problem{{"metrics", "collides with DNS over TCP on 169.254.10.11:53"}}},
		{"health bare port", `health: ":9254"`, []problem{{"health", "bare :port"}}},
		{"health same as metrics", `{"metrics": "127.0.0.1:9300", "health": "127.0.0.1:9300"}`,
			[]problem{{"health", "must differ from metrics"}}},
		{"resolvConf empty with vnetDNS auto", "resolvConf: []",
			[]problem{{"resolvConf", "must name at least one file"}}},
		{"resolvConf with an empty name", `resolvConf: [""]`,
			[]problem{{"resolvConf[0]", "non-empty string"}, {"resolvConf", "must name at least one file"}}},
		{"field inside and outside the wrapper", `{"mode": "Required", "localDnsProfile": {"mode": "Disabled"}}`,
			[]problem{{"localDnsProfile.mode", "set both inside and outside localDnsProfile"}}},
		{"wrapper in both spellings", `{"localDNSProfile": {}, "localDnsProfile": {}}`,
			[]problem{{"localDnsProfile", "given twice"}}},
		{"wrapper not a mapping", `{"localDNSProfile": "Enabled"}`,
			[]problem{{"localDNSProfile", "must be a mapping"}}},
		{"document not a mapping", "- mode: Required", []problem{{"(document)", "must be a mapping of profile fields"}}},
		{"not YAML or JSON", "{mode: [", []problem{{"(document)", "not valid YAML or JSON"}}},
		{"duplicate key", "mode: Required\nmode: Disabled", []problem{{"(document)", "already defined"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.doc))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid profile rejected:\n%s\n%v", tc.doc, err)
				}
				if p == nil {
					t.Fatal("nil profile without error")
				}
				return
			}
			if err == nil {
				t.Fatalf("invalid profile accepted:\n%s", tc.doc)
			}
			if p != nil {
				t.Errorf("a profile was returned with the error")
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("error is %T, want Problems: %v", err, err)
			}
			checkProblems(t, ps, tc.want)
		})
	}
}

// checkProblems matches got against want one to one, by exact path and a
// substring of the reason.
func checkProblems(t *testing.T, got Problems, want []problem) {
	t.Helper()
	used := make([]bool, len(got))
	for _, w := range want {
		found := false
		for i, g := range got {
			if !used[i] && g.Path == w.path && strings.Contains(g.Reason, w.reason) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("missing problem %s: ...%s...", w.path, w.reason)
		}
	}
	for i, g := range got {
		if !used[i] {
			t.Errorf("unexpected problem %s", g)
		}
	}
	if t.Failed() {
		t.Logf("all problems:\n%v", got)
	}
}

// TestAllProblemsAtOnce checks that a profile with many problems, in every
// part of the document, gets all of them in one error.
func TestAllProblemsAtOnce(t *testing.T) {
	doc := `{
  "mode": "On",
  "port": 0,
  "listeners": {"node": "169.254.10.11"},
  "clusterDNS": ["10.0.0.300", "169.254.10.10"],
  "metrics": ":9253",
  "network": {"reconcileInterval": "soon"},
  "cache": {"maxMemory": "lots", "snapshot": "cache.snap", "ttl": 5},
  "localDnsProfile": {
    "state": "Enabled",
    "vnetDnsOverrides": {
      ".": {"forwardDestination": "ClusterCoreDNS", "maxConcurrent": 70000000},
      "cluster.local": {"forwardDestination": "VnetDNS", "protocol": "ForceTCP", "serveStale": "Verify"}
    },
    "kubeDnsOverrides": {
      ".": {"serveStale": "Sometimes"},
      "Cluster.Local": {},
      "cluster.local.": {"cacheDurationInSeconds": "1h"}
    }
  }
}`
	_, err := Parse([]byte(doc))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %T %v, want Problems", err, err)
	}
	want := []problem{
		{"mode", "must be one of"},
		{"port", "between 1 and 65535"},
		{"listeners.cluster", "must differ from listeners.node"},
		{"clusterDNS[0]", "must be ip or ip:port"},
		// The node listener moved to .11, so clusterDNS[1] (.10) is no loop;
		// port 0 was rejected and the default 53 kept.
		{"metrics", "bare :port"},
		{"network.reconcileInterval", "must be a duration"},
		{"cache.maxMemory", "byte count"},
		{"cache.snapshot", "absolute path"},
		{"cache.ttl", "unknown field"},
		{`localDnsProfile.vnetDnsOverrides.".".forwardDestination`, "may not forward to ClusterCoreDNS"},
		{`localDnsProfile.vnetDnsOverrides.".".maxConcurrent`, "between 0 and 1000000"},
		{`localDnsProfile.vnetDnsOverrides."cluster.local".forwardDestination`, "may never forward to VnetDNS"},
		{`localDnsProfile.vnetDnsOverrides."cluster.local".protocol`, "ForceTCP cannot be combined with serveStale Verify"},
		{`localDnsProfile.kubeDnsOverrides.".".serveStale`, "must be one of Verify, Immediate, Disable"},
		{`localDnsProfile.kubeDnsOverrides."cluster.local."`, "duplicate zone"},
	}
	checkProblems(t, ps, want)
	// The message lists each problem on a line of its own.
	if n := strings.Count(err.Error(), "\n"); n != len(want) {
		t.Errorf("error has %d lines after the header, want %d:\n%v", n, len(want), err)
	}
}

func TestValidateProfileBuiltInCode(t *testing.T) {
	p := Default()
	p.ClusterListener = p.NodeListener
	p.VNetDNSAuto, p.VNetDNS = false, []Upstream{netip.MustParseAddrPort("169.254.10.10:53")}
	ro := p.KubeDNSOverrides["."]
	ro.Protocol, ro.ServeStale = ProtocolForceTCP, ServeStaleVerify
	p.KubeDNSOverrides["."] = ro
	err := p.Validate()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Validate() = %v, want Problems", err)
	}
	checkProblems(t, ps, []problem{
		{"listeners.cluster", "must differ"},
		{"vnetDNS[0]", "would loop"},
		{`kubeDNSOverrides.".".protocol`, "ForceTCP cannot be combined"},
	})
}
