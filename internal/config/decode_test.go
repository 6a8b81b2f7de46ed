package config

import (
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, doc string) *Profile {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse:\n%s\nerror: %v", doc, err)
	}
	return p
}

func TestEmptyProfileIsAKSDefault(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "{}", "null"} {
		p := mustParse(t, doc)
		if !reflect.DeepEqual(p, Default()) {
			t.Errorf("Parse(%q) = %+v, want Default()", doc, p)
		}
	}

	p := Default()
	if p.Mode != ModePreferred {
		t.Errorf("mode %s, want Preferred", p.Mode)
	}
	if p.NodeListener.String() != "169.254.10.10" || p.ClusterListener.String() != "169.254.10.11" {
		t.Errorf("listeners %s/%s, want AKS's 169.254.10.10/169.254.10.11", p.NodeListener, p.ClusterListener)
	}
	if got := p.ClusterDNS; len(got) != 1 || got[0].String() != "10.0.0.10:53" {
		t.Errorf("clusterDNS %v, want AKS's 10.0.0.10:53", got)
	}
	if !p.VNetDNSAuto || p.ClusterDomain != "cluster.local" {
		t.Errorf("vnetDNS auto %v, clusterDomain %q", p.VNetDNSAuto, p.ClusterDomain)
	}
	aks := Override{
		QueryLogging: "Error", Protocol: "PreferUDP", ForwardDestination: "ClusterCoreDNS",
		ForwardPolicy: "Sequential", MaxConcurrent: 1000, CacheDurationInSeconds: 3600,
		ServeStaleDurationInSeconds: 3600, ServeStale: "Immediate",
	}
	vnetRoot := aks
	vnetRoot.ForwardDestination = "VnetDNS"
	wantVnet := map[string]Override{".": vnetRoot, "cluster.local.": aks}
	wantKube := map[string]Override{".": aks, "cluster.local.": aks}
	if !reflect.DeepEqual(p.VnetDNSOverrides, wantVnet) {
		t.Errorf("vnetDNSOverrides %+v, want %+v", p.VnetDNSOverrides, wantVnet)
	}
	if !reflect.DeepEqual(p.KubeDNSOverrides, wantKube) {
		t.Errorf("kubeDNSOverrides %+v, want %+v", p.KubeDNSOverrides, wantKube)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("Default() does not validate: %v", err)
	}
	if err := Laptop().Validate(); err != nil {
		t.Errorf("Laptop() does not validate: %v", err)
	}
}

// wantNodepool checks the values of testdata/nodepool-*.json.
func wantNodepool(t *testing.T, p *Profile) {
	t.Helper()
	if p.Mode != ModeRequired {
		t.Errorf("mode %s, want Required", p.Mode)
	}
	kr, vr := p.KubeDNSOverrides["."], p.VnetDNSOverrides["."]
	if kr.ServeStale != ServeStaleVerify || kr.ForwardDestination != DestinationClusterCoreDNS {
		t.Errorf(`kubeDNSOverrides "." = %+v`, kr)
	}
	if kc := p.KubeDNSOverrides["cluster.local."]; kc.Protocol != ProtocolForceTCP {
		t.Errorf(`kubeDNSOverrides "cluster.local." = %+v, want ForceTCP`, kc)
	}
	want := Override{
		QueryLogging: QueryLoggingLog, Protocol: ProtocolPreferUDP, ForwardDestination: DestinationVnetDNS,
		ForwardPolicy: PolicyRoundRobin, MaxConcurrent: 500, CacheDurationInSeconds: 600,
		ServeStaleDurationInSeconds: 1800, ServeStale: ServeStaleImmediate,
	}
	if vr != want {
		t.Errorf(`vnetDNSOverrides "." = %+v, want %+v`, vr, want)
	}
	if len(p.KubeDNSOverrides) != 2 || len(p.VnetDNSOverrides) != 2 {
		t.Errorf("zones: kube %v vnet %v, want . and cluster.local. in each", Zones(p.KubeDNSOverrides), Zones(p.VnetDNSOverrides))
	}
}

// TestPastedAgentPoolProfile reads the localDnsProfile of an agent pool as
// `az aks nodepool show` prints it (CLI spelling) and as an ARM template
// writes it, each with and without the outer key, as JSON and as YAML.
func TestPastedAgentPoolProfile(t *testing.T) {
	for _, file := range []string{"nodepool-cli.json", "nodepool-arm.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		var wrapped map[string]map[string]any
		if err := json.Unmarshal(data, &wrapped); err != nil {
			t.Fatal(err)
		}
		if len(wrapped) != 1 {
			t.Fatalf("%s: want one outer key", file)
		}
		var inner map[string]any
		for _, v := range wrapped {
			inner = v
		}
		bare, _ := json.Marshal(inner)

		for name, doc := range map[string]string{
			"with outer key":    string(data),
			"without outer key": string(bare),
			"as YAML":           jsonToYAMLish(t, bare),
		} {
			t.Run(file+"/"+name, func(t *testing.T) {
				wantNodepool(t, mustParse(t, doc))
			})
		}

		// Loading from a file takes the same path.
		p, err := Load(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		wantNodepool(t, p)
	}
}

// jsonToYAMLish re-indents a JSON object as block YAML, so the YAML path of
// the decoder sees the same document.
func jsonToYAMLish(t *testing.T, data []byte) string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var walk func(m map[string]any, indent string)
	walk = func(m map[string]any, indent string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			key := k
			if k == "." {
				key = `"."`
			}
			switch x := m[k].(type) {
			case map[string]any:
				b.WriteString(indent + key + ":\n")
				walk(x, indent+"  ")
			default:
				b.WriteString(indent + key + ": " + strings.TrimSpace(mustJSON(t, x)) + "\n")
			}
		}
	}
	walk(v, "")
	return b.String()
}

func mustJSON(t *testing.T, v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestNodeFieldsBesideWrappedProfile(t *testing.T) {
	p := mustParse(t, `{
  "clusterDNS": ["10.0.0.10", "10.0.0.11:5353"],
  "vnetDNS": ["168.63.129.16"],
  "localDnsProfile": {"mode": "Required", "kubeDnsOverrides": {".": {"serveStale": "Disable"}}}
}`)
	if p.Mode != ModeRequired || p.KubeDNSOverrides["."].ServeStale != ServeStaleDisable {
		t.Errorf("wrapped fields not applied: mode %s, kube root %+v", p.Mode, p.KubeDNSOverrides["."])
	}
	want := []Upstream{netip.MustParseAddrPort("10.0.0.10:53"), netip.MustParseAddrPort("10.0.0.11:5353")}
	if !reflect.DeepEqual(p.ClusterDNS, want) || p.VNetDNSAuto || p.VNetDNS[0].String() != "168.63.129.16:53" {
		t.Errorf("node fields: clusterDNS %v vnetDNS %v auto %v", p.ClusterDNS, p.VNetDNS, p.VNetDNSAuto)
	}
	// A map given replaces the default map: only its zones exist.
	if _, ok := p.KubeDNSOverrides["cluster.local."]; ok || len(p.KubeDNSOverrides) != 1 {
		t.Errorf("kubeDNSOverrides zones %v, want only the root", Zones(p.KubeDNSOverrides))
	}
	// The map not given keeps the defaults.
	if len(p.VnetDNSOverrides) != 2 {
		t.Errorf("vnetDNSOverrides zones %v, want the defaults", Zones(p.VnetDNSOverrides))
	}
}

func TestFullYAMLProfile(t *testing.T) {
	p := mustParse(t, `
mode: Disabled
listeners:
  node: 169.254.20.10
  cluster: 169.254.20.11
port: 5353
readyPort: 18181
clusterDNS: ["[fd00::10]:53"]
clusterDomain: Corp.K8s.
vnetDNS: auto
resolvConf: /tmp/resolv.conf
failoverToVNetDNS: false
network:
  manage: false
  reconcileInterval: 2m
metrics: "[::1]:9999"
cpuLimitInMilliCores: 1500
memoryLimitInMB: 1600
cache:
  engine: coredns
  maxMemory: 1Gi
  snapshot: ""
kubeDNSOverrides:
  .: {queryLogging: log, protocol: forcetcp, forwardPolicy: random, serveStale: immediate}
  Corp.Example.COM.: {forwardDestination: VnetDNS, maxConcurrent: 0, cacheDurationInSeconds: 0}
`)
	if p.Mode != ModeDisabled || p.NodeListener.String() != "169.254.20.10" || p.ClusterListener.String() != "169.254.20.11" {
		t.Errorf("mode/listeners: %s %s %s", p.Mode, p.NodeListener, p.ClusterListener)
	}
	if p.Port != 5353 || p.ReadyPort != 18181 {
		t.Errorf("ports %d %d", p.Port, p.ReadyPort)
	}
	if len(p.ClusterDNS) != 1 || p.ClusterDNS[0].String() != "[fd00::10]:53" {
		t.Errorf("clusterDNS %v", p.ClusterDNS)
	}
	if p.ClusterDomain != "corp.k8s" {
		t.Errorf("clusterDomain %q, want corp.k8s (normalised, no trailing dot)", p.ClusterDomain)
	}
	if !p.VNetDNSAuto || !reflect.DeepEqual(p.ResolvConf, []string{"/tmp/resolv.conf"}) {
		t.Errorf("vnetDNS auto %v resolvConf %v", p.VNetDNSAuto, p.ResolvConf)
	}
	if p.FailoverToVNetDNS || p.Network.Manage || p.Network.ReconcileInterval != 2*time.Minute {
		t.Errorf("failover %v network %+v", p.FailoverToVNetDNS, p.Network)
	}
	if p.Metrics != "[::1]:9999" {
		t.Errorf("metrics %q", p.Metrics)
	}
	if p.CPULimitInMilliCores != 1500 || p.MemoryLimitInMB != 1600 {
		t.Errorf("cpuLimitInMilliCores %d memoryLimitInMB %d", p.CPULimitInMilliCores, p.MemoryLimitInMB)
	}
	if p.Cache != (Cache{Engine: CacheEngineCoreDNS, MaxMemory: 1 << 30}) {
		t.Errorf("cache %+v", p.Cache)
	}
	root := p.KubeDNSOverrides["."]
	if root.QueryLogging != QueryLoggingLog || root.Protocol != ProtocolForceTCP || root.ForwardPolicy != PolicyRandom {
		t.Errorf("enums are matched case-insensitively and stored canonically: %+v", root)
	}
	corp, ok := p.KubeDNSOverrides["corp.example.com."]
	if !ok {
		t.Fatalf("zones %v: want corp.example.com. normalised", Zones(p.KubeDNSOverrides))
	}
	if corp.ForwardDestination != DestinationVnetDNS || corp.MaxConcurrent != 0 || corp.CacheDurationInSeconds != 0 {
		t.Errorf("corp zone %+v", corp)
	}
	if corp.ServeStale != ServeStaleImmediate || corp.ServeStaleDurationInSeconds != 3600 {
		t.Errorf("unset fields of a zone take AKS defaults: %+v", corp)
	}
	// The default vnet map followed the custom cluster domain.
	if _, ok := p.VnetDNSOverrides["corp.k8s."]; !ok {
		t.Errorf("vnetDNSOverrides zones %v: the default cluster.local entry should follow clusterDomain", Zones(p.VnetDNSOverrides))
	}
}

func TestZoneKeysYAMLReadsAsScalars(t *testing.T) {
	// YAML reads these keys as an int and a bool; they are zone names.
	p := mustParse(t, "kubeDNSOverrides: {\".\": {}, 10: {}, true: {forwardDestination: VnetDNS}}\n")
	if got := Zones(p.KubeDNSOverrides); !reflect.DeepEqual(got, []string{".", "10.", "true."}) {
		t.Errorf("zones %v", got)
	}
}

func TestClusterDNSAuto(t *testing.T) {
	p := mustParse(t, "clusterDNS: AUTO\nvnetDNS: [192.0.2.53]\n")
	if !p.ClusterDNSAuto || p.ClusterDNS != nil {
		t.Fatalf("clusterDNS auto %v %v", p.ClusterDNSAuto, p.ClusterDNS)
	}
	u, err := p.ResolveUpstreams()
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Cluster) != 1 || u.Cluster[0].String() != "192.0.2.53:53" || u.VNetSource != "" {
		t.Errorf("auto cluster DNS should be the VNet servers: %+v", u)
	}
}

func TestVnetRootDefaultsToVnetDNS(t *testing.T) {
	// A pasted profile that leaves out forwardDestination for the node
	// listener's root must not trip the root-to-ClusterCoreDNS rule.
	p := mustParse(t, `{"vnetDnsOverrides": {".": {"cacheDurationInSeconds": 60}}}`)
	if got := p.VnetDNSOverrides["."].ForwardDestination; got != DestinationVnetDNS {
		t.Errorf("vnet root destination %s, want VnetDNS", got)
	}
	if got := p.KubeDNSOverrides["."].ForwardDestination; got != DestinationClusterCoreDNS {
		t.Errorf("kube root destination %s, want ClusterCoreDNS", got)
	}
}

func TestProblemsError(t *testing.T) {
	_, err := Parse([]byte("port: 0\nmode: x\n"))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %T, want Problems", err)
	}
	msg := err.Error()
	for _, want := range []string{"invalid profile (2 problems)", `mode: "x": must be one of Required, Preferred, Disabled`, `port: "0": must be between 1 and 65535`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error\n%s\nlacks %q", msg, want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "read profile") {
		t.Errorf("Load of a missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("port: 0\n"), 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) || !errors.As(err, &ps) {
		t.Errorf("Load error should name the file and wrap Problems: %v", err)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[any]int64{67108864: 67108864, "64Mi": 64 << 20, "1Gi": 1 << 30, "512Ki": 512 << 10, " 2Mi ": 2 << 20, float64(1 << 21): 1 << 21} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%v) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []any{"64MB", "Mi", "-1Mi", "1.5Gi", 1.5, true, nil, "99999999999Gi"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%v) succeeded", in)
		}
	}
}

func TestNormalizeZone(t *testing.T) {
	for in, want := range map[string]string{".": ".", "Cluster.Local": "cluster.local.", "cluster.local.": "cluster.local.", " corp.example.com ": "corp.example.com.", "_tcp.x-y.example": "_tcp.x-y.example."} {
		got, err := NormalizeZone(in)
		if err != nil || got != want {
			t.Errorf("NormalizeZone(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "..", "a..b", "bad zone", "x!.com", strings.Repeat("a", 64) + ".com", strings.Repeat("abcdefghi.", 26)} {
		if z, err := NormalizeZone(in); err == nil {
			t.Errorf("NormalizeZone(%q) = %q, want an error", in, z)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]string{"10.0.0.10": "10.0.0.10:53", "10.0.0.10:5353": "10.0.0.10:5353", "fd00::1": "[fd00::1]:53", "[fd00::1]:54": "[fd00::1]:54", "::ffff:10.0.0.1": "10.0.0.1:53"} {
		got, err := ParseUpstream(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "dns.example.com", "10.0.0.300", "10.0.0.10:0", "0.0.0.0", "224.0.0.1", "fe80::1%eth0", "10.0.0.10:70000", ":53"} {
		if got, err := ParseUpstream(in); err == nil {
			t.Errorf("ParseUpstream(%q) = %v, want an error", in, got)
		}
	}
}

func TestClientBudget(t *testing.T) {
	if b := mustParse(t, "{}").ClientBudget; b.QueriesPerSecond != DefaultClientQueriesPerSecond || b.EffectiveBurst() != ClientBudgetBurstFactor*DefaultClientQueriesPerSecond {
		t.Errorf("default budget %+v (burst %d)", b, b.EffectiveBurst())
	}
	if b := mustParse(t, "clientBudget: {queriesPerSecond: 300}").ClientBudget; b.QueriesPerSecond != 300 || b.EffectiveBurst() != 1500 {
		t.Errorf("rate only: %+v (burst %d), want 300 and 1500", b, b.EffectiveBurst())
	}
	if b := mustParse(t, "clientBudget: {queriesPerSecond: 300, burst: 40}").ClientBudget; b.EffectiveBurst() != 40 {
		t.Errorf("burst given: %+v", b)
	}
	if b := mustParse(t, "clientBudget: {queriesPerSecond: 0}").ClientBudget; b.QueriesPerSecond != 0 {
		t.Errorf("off: %+v", b)
	}
	_, err := Parse([]byte("clientBudget: {queriesPerSecond: -1, burst: 2.5, perClient: 3}\n"))
	for _, want := range []string{
		`clientBudget.queriesPerSecond: "-1": must be between 0 and 1000000`,
		`clientBudget.burst: "2.5": must be a whole number`,
		`clientBudget.perClient: unknown field`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v\nlacks %q", err, want)
		}
	}
}

// TestHostsPluginFields: AKS's enableHostsPlugin, criticalFqdns and
// hostsPluginRefreshIntervalInSeconds, with AKS's defaults.
func TestHostsPluginFields(t *testing.T) {
	p := mustParse(t, "")
	if p.EnableHostsPlugin || p.CriticalFQDNs != nil || p.HostsPluginRefreshIntervalInSeconds != 900 {
		t.Fatalf("defaults: %v %v %d", p.EnableHostsPlugin, p.CriticalFQDNs, p.HostsPluginRefreshIntervalInSeconds)
	}
	p = mustParse(t, `{"localDNSProfile": {"enableHostsPlugin": true, "criticalFqdns": ["MCR.microsoft.com", "packages.aks.azure.com.", "mcr.microsoft.com"], "hostsPluginRefreshIntervalInSeconds": 5}}`)
	if !p.EnableHostsPlugin || p.HostsPluginRefreshIntervalInSeconds != 5 ||
		len(p.CriticalFQDNs) != 2 || p.CriticalFQDNs[0] != "mcr.microsoft.com." || p.CriticalFQDNs[1] != "packages.aks.azure.com." {
		t.Fatalf("decoded: %v %v %d", p.EnableHostsPlugin, p.CriticalFQDNs, p.HostsPluginRefreshIntervalInSeconds)
	}
	// Disabled: the names are still checked, and kept (not used).
	p = mustParse(t, "criticalFqdns: [login.microsoftonline.com]")
	if p.EnableHostsPlugin || len(p.CriticalFQDNs) != 1 {
		t.Fatalf("names without the plugin: %v %v", p.EnableHostsPlugin, p.CriticalFQDNs)
	}
}

// TestOverrideHealthFields: AKS's per-override healthCheck and
// failfastAllUnhealthyUpstreams; unset, they keep localdns's behaviour.
func TestOverrideHealthFields(t *testing.T) {
	p := mustParse(t, "")
	if o := p.KubeDNSOverrides["."]; o.HealthCheck != nil || o.FailfastAllUnhealthyUpstreams != nil {
		t.Fatalf("defaults: %+v", o)
	}
	p = mustParse(t, `kubeDnsOverrides: {".": {healthCheck: {duration: 1s, noRec: true, domain: Probe.Example.}, failfastAllUnhealthyUpstreams: false}, corp.example: {failfastAllUnhealthyUpstreams: true, healthCheck: {duration: 250ms}}}`)
	o := p.KubeDNSOverrides["."]
	if o.HealthCheck == nil || *o.HealthCheck != (HealthCheck{Duration: time.Second, NoRec: true, Domain: "probe.example."}) {
		t.Fatalf("healthCheck: %+v", o.HealthCheck)
	}
	if o.FailfastAllUnhealthyUpstreams == nil || *o.FailfastAllUnhealthyUpstreams {
		t.Fatalf("failfast false: %v", o.FailfastAllUnhealthyUpstreams)
	}
	c := p.KubeDNSOverrides["corp.example."]
	if c.HealthCheck == nil || *c.HealthCheck != (HealthCheck{Duration: 250 * time.Millisecond}) || c.FailfastAllUnhealthyUpstreams == nil || !*c.FailfastAllUnhealthyUpstreams {
		t.Fatalf("corp.example: %+v %v", c.HealthCheck, c.FailfastAllUnhealthyUpstreams)
	}
}
