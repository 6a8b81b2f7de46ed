package config

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a profile.
type Problem struct {
	Path   string // field path, e.g. vnetDNSOverrides.".".serveStale
	Value  string // the offending value as written, may be empty
	Reason string
}

func (p Problem) String() string {
	if p.Value == "" {
		return fmt.Sprintf("%s: %s", p.Path, p.Reason)
	}
	return fmt.Sprintf("%s: %q: %s", p.Path, p.Value, p.Reason)
}

// Problems is the error returned for an invalid profile; it lists every problem.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return fmt.Sprintf("invalid profile (%d problems):\n  %s", len(ps), strings.Join(lines, "\n  "))
}

// Load reads and validates the profile at path.
func Load(path string) (*Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return p, nil
}

// Parse decodes a YAML or JSON profile on top of the defaults and validates
// it. The error, if any, is a Problems value listing everything found.
func Parse(data []byte) (*Profile, error) {
	var root any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if err.Error() == "EOF" {
			root = map[string]any{}
		} else {
			return nil, Problems{{Path: "(document)", Reason: "not valid YAML or JSON: " + err.Error()}}
		}
	}
	root = stringKeys(root)
	d := &decoder{written: map[string]string{}}
	p := Default()
	d.profile(p, root)
	if !d.maxMemorySet {
		p.Cache.MaxMemory = CacheBudget(p.MemoryLimitInMB)
	}
	for _, vp := range p.validate() {
		vp.Path = d.rewrite(vp.Path)
		d.problems = append(d.problems, vp)
	}
	if len(d.problems) > 0 {
		return nil, d.problems
	}
	return p, nil
}

// stringKeys turns the mappings YAML decodes with non-string keys (a zone
// written as 1 or true) into string-keyed ones, so that the key is checked
// like any other instead of the whole mapping being refused.
func stringKeys(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
		return x
	}
	return v
}

type decoder struct {
	problems Problems
	// written maps the paths validate reports (canonical field names,
	// normalised zones) to the spelling of the document, so that a problem
	// found after decoding names the field as the user wrote it.
	written map[string]string
	// maxMemorySet records that cache.maxMemory was given; otherwise the
	// budget is derived from memoryLimitInMB.
	maxMemorySet bool
}

// rewrite returns path with its longest known canonical prefix replaced by
// the document's spelling.
func (d *decoder) rewrite(path string) string {
	best := ""
	for canon := range d.written {
		if (path == canon || strings.HasPrefix(path, canon+".")) && len(canon) > len(best) {
			best = canon
		}
	}
	if best == "" {
		return path
	}
	return d.written[best] + path[len(best):]
}

func (d *decoder) fail(path string, v any, reason string, args ...any) {
	d.problems = append(d.problems, Problem{Path: path, Value: show(v), Reason: fmt.Sprintf(reason, args...)})
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case map[string]any, []any:
		return fmt.Sprintf("%v", x)
	default:
		return fmt.Sprint(x)
	}
}

// fields walks a mapping, calling the handler of each known key (matched
// case-insensitively, so ARM's kubeDNSOverrides and the CLI's
// kubeDnsOverrides both work) and reporting unknown keys.
func (d *decoder) fields(path string, v any, handlers map[string]func(path string, v any)) {
	m, ok := v.(map[string]any)
	if !ok {
		d.fail(path, v, "must be a mapping")
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		h, ok := handlers[strings.ToLower(k)]
		if !ok {
			d.fail(join(path, k), nil, "unknown field")
			continue
		}
		h(join(path, k), m[k])
	}
}

func join(path, key string) string {
	if strings.ContainsAny(key, ". ") || key == "" {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) profile(p *Profile, root any) {
	if root == nil {
		return
	}
	m, ok := root.(map[string]any)
	if !ok {
		d.fail("(document)", root, "must be a mapping of profile fields")
		return
	}
	// A pasted agent-pool JSON may wrap the AKS fields in localDNSProfile
	// (ARM) or localDnsProfile (az CLI); node fields may sit beside it.
	// Fields inside the wrapper are reported with its name in the path.
	outer := make(map[string]any, len(m))
	var wrapKey string
	var inner map[string]any
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !strings.EqualFold(k, "localDNSProfile") {
			outer[k] = m[k]
			continue
		}
		if wrapKey != "" {
			d.fail(k, nil, "given twice (%s and %s)", wrapKey, k)
			continue
		}
		im, ok := m[k].(map[string]any)
		if !ok {
			d.fail(k, m[k], "must be a mapping")
			continue
		}
		wrapKey, inner = k, im
	}
	if inner != nil {
		lowerOuter := map[string]bool{}
		for k := range outer {
			lowerOuter[strings.ToLower(k)] = true
		}
		for _, k := range slices.Sorted(maps.Keys(inner)) {
			if lowerOuter[strings.ToLower(k)] {
				d.fail(join(wrapKey, k), nil, "set both inside and outside %s", wrapKey)
				delete(inner, k)
			}
		}
	}
	vnetSet, kubeSet := false, false
	handlers := map[string]func(string, any){
		"mode": func(path string, v any) {
			p.Mode = Mode(d.enum(path, v, string(p.Mode), ModeRequired, ModePreferred, ModeDisabled))
		},
		// state is AKS's read-only status field (Enabled or Disabled);
		// accepted so a pasted profile works, checked, and ignored.
		"state": func(path string, v any) { d.enum(path, v, "", "Enabled", "Disabled") },
		"listeners": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"node":    func(path string, v any) { p.NodeListener = d.addr(path, v, p.NodeListener) },
				"cluster": func(path string, v any) { p.ClusterListener = d.addr(path, v, p.ClusterListener) },
			})
		},
		"port":          func(path string, v any) { p.Port = d.port(path, v, p.Port) },
		"readyport":     func(path string, v any) { p.ReadyPort = d.port(path, v, p.ReadyPort) },
		"clusterdomain": func(path string, v any) { p.ClusterDomain = strings.TrimSuffix(d.zone(path, v, p.ClusterDomain), ".") },
		"clusterdns": func(path string, v any) {
			if s, ok := v.(string); ok && strings.EqualFold(s, "auto") {
				p.ClusterDNS, p.ClusterDNSAuto = nil, true
				return
			}
			p.ClusterDNS, p.ClusterDNSAuto = d.upstreams(path, v), false
		},
		"vnetdns": func(path string, v any) {
			if s, ok := v.(string); ok && strings.EqualFold(s, "auto") {
				p.VNetDNS, p.VNetDNSAuto = nil, true
				return
			}
			p.VNetDNS, p.VNetDNSAuto = d.upstreams(path, v), false
		},
		"resolvconf":        func(path string, v any) { p.ResolvConf = d.strings(path, v) },
		"failovertovnetdns": func(path string, v any) { p.FailoverToVNetDNS = d.bool(path, v, p.FailoverToVNetDNS) },
		"network": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"manage": func(path string, v any) { p.Network.Manage = d.bool(path, v, p.Network.Manage) },
				"reconcileinterval": func(path string, v any) {
					p.Network.ReconcileInterval = d.duration(path, v, p.Network.ReconcileInterval)
				},
				"replynotrack": func(path string, v any) { p.Network.ReplyNotrack = d.bool(path, v, p.Network.ReplyNotrack) },
				"linkname":     func(path string, v any) { p.Network.LinkName = d.linkName(path, v, p.Network.LinkName) },
				"statedir":     func(path string, v any) { p.Network.StateDir = d.absPath(path, v, p.Network.StateDir) },
				"fallback":     func(path string, v any) { p.Network.Fallback = d.bool(path, v, p.Network.Fallback) },
				"fallbackfile": func(path string, v any) { p.Network.FallbackFile = d.absPath(path, v, p.Network.FallbackFile) },
			})
		},
		"cpulimitinmillicores": func(path string, v any) {
			p.CPULimitInMilliCores = d.int(path, v, p.CPULimitInMilliCores, MinCPULimitInMilliCores, MaxCPULimitInMilliCores)
		},
		"memorylimitinmb": func(path string, v any) {
			p.MemoryLimitInMB = d.int(path, v, p.MemoryLimitInMB, MinMemoryLimitInMB, MaxMemoryLimitInMB)
		},
		"enablehostsplugin": func(path string, v any) { p.EnableHostsPlugin = d.bool(path, v, p.EnableHostsPlugin) },
		"criticalfqdns": func(path string, v any) {
			var out []string
			for i, s := range d.strings(path, v) {
				ipath := fmt.Sprintf("%s[%d]", path, i)
				if z := d.zone(ipath, s, ""); z == "." {
					d.fail(ipath, s, "must be a name below the root")
				} else if z != "" && !slices.Contains(out, z) {
					out = append(out, z)
				}
			}
			p.CriticalFQDNs = out
		},
		"hostspluginrefreshintervalinseconds": func(path string, v any) {
			p.HostsPluginRefreshIntervalInSeconds = d.int(path, v, p.HostsPluginRefreshIntervalInSeconds,
				MinHostsPluginRefreshIntervalInSeconds, MaxHostsPluginRefreshIntervalInSeconds)
		},
		"metrics": func(path string, v any) { p.Metrics = d.hostPort(path, v, p.Metrics) },
		"health":  func(path string, v any) { p.Health = d.hostPort(path, v, p.Health) },
		"hostresolver": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"redirect": func(path string, v any) { p.HostResolver.Redirect = d.bool(path, v, p.HostResolver.Redirect) },
				"interface": func(path string, v any) {
					p.HostResolver.Interface = d.linkName(path, v, p.HostResolver.Interface)
				},
			})
		},
		"junk": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"kubernetesschema": func(path string, v any) { p.JunkKubernetesSchema = d.bool(path, v, p.JunkKubernetesSchema) },
			})
		},
		"clientbudget": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"queriespersecond": func(path string, v any) {
					p.ClientBudget.QueriesPerSecond = d.int(path, v, p.ClientBudget.QueriesPerSecond, 0, MaxClientQueriesPerSecond)
				},
				"burst": func(path string, v any) {
					p.ClientBudget.Burst = d.int(path, v, p.ClientBudget.Burst, 0, MaxClientBurst)
				},
			})
		},
		"cache": func(path string, v any) {
			d.fields(path, v, map[string]func(string, any){
				"engine": func(path string, v any) {
					p.Cache.Engine = CacheEngine(d.enum(path, v, string(p.Cache.Engine), CacheEngineLocalDNS, CacheEngineCoreDNS))
				},
				"maxmemory": func(path string, v any) {
					p.Cache.MaxMemory = d.bytes(path, v, p.Cache.MaxMemory)
					d.maxMemorySet = true
				},
				"snapshot": func(path string, v any) {
					s, ok := v.(string)
					if v != nil && !ok {
						d.fail(path, v, "must be a file path or empty")
						return
					}
					p.Cache.Snapshot = s
				},
			})
		},
		"vnetdnsoverrides": func(path string, v any) {
			if vnetSet {
				d.fail(path, nil, "given twice (vnetDNSOverrides and vnetDnsOverrides)")
			}
			vnetSet = true
			if o := d.overrides("vnetDNSOverrides", path, v, true); o != nil {
				p.VnetDNSOverrides = o
			}
		},
		"kubednsoverrides": func(path string, v any) {
			if kubeSet {
				d.fail(path, nil, "given twice (kubeDNSOverrides and kubeDnsOverrides)")
			}
			kubeSet = true
			if o := d.overrides("kubeDNSOverrides", path, v, false); o != nil {
				p.KubeDNSOverrides = o
			}
		},
	}
	d.fields("", outer, handlers)
	if inner != nil {
		d.fields(wrapKey, inner, handlers)
	}
	// The default override maps key the cluster domain's settings on
	// cluster.local; with another cluster domain they belong to that one.
	if cz := strings.ToLower(p.ClusterDomain) + "."; p.ClusterDomain != "" && cz != "cluster.local." {
		if !vnetSet {
			rekey(p.VnetDNSOverrides, "cluster.local.", cz)
		}
		if !kubeSet {
			rekey(p.KubeDNSOverrides, "cluster.local.", cz)
		}
	}
}

// rekey moves m[from] to m[to].
func rekey(m map[string]Override, from, to string) {
	if o, ok := m[from]; ok {
		delete(m, from)
		m[to] = o
	}
}

// overrides decodes one zone map; canon is the field's canonical name, the
// one validate uses in its paths.
func (d *decoder) overrides(canon, path string, v any, vnet bool) map[string]Override {
	m, ok := v.(map[string]any)
	if !ok {
		d.fail(path, v, "must be a mapping of zone to settings")
		return nil
	}
	d.written[canon] = path
	out := make(map[string]Override, len(m))
	seen := map[string]string{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, zone := range keys {
		zpath := join(path, zone)
		norm := d.zone(zpath, zone, "")
		if norm == "" {
			continue
		}
		if first, dup := seen[norm]; dup {
			d.fail(zpath, zone, "duplicate zone: same as %q", first)
			continue
		}
		seen[norm] = zone
		d.written[join(canon, norm)] = zpath
		o := DefaultOverride()
		if vnet && norm == "." {
			// The node listener's root always goes to VNet DNS; make that
			// the default so a pasted profile that omits it is valid.
			o.ForwardDestination = DestinationVnetDNS
		}
		if m[zone] != nil {
			d.fields(zpath, m[zone], map[string]func(string, any){
				"querylogging": func(p string, v any) {
					o.QueryLogging = QueryLogging(d.enum(p, v, string(o.QueryLogging), QueryLoggingError, QueryLoggingLog))
				},
				"protocol": func(p string, v any) {
					o.Protocol = Protocol(d.enum(p, v, string(o.Protocol), ProtocolPreferUDP, ProtocolForceTCP))
				},
				"forwarddestination": func(p string, v any) {
					o.ForwardDestination = Destination(d.enum(p, v, string(o.ForwardDestination), DestinationClusterCoreDNS, DestinationVnetDNS))
				},
				"forwardpolicy": func(p string, v any) {
					o.ForwardPolicy = ForwardPolicy(d.enum(p, v, string(o.ForwardPolicy), PolicySequential, PolicyRoundRobin, PolicyRandom))
				},
				"maxconcurrent":          func(p string, v any) { o.MaxConcurrent = d.int(p, v, o.MaxConcurrent, 0, 1_000_000) },
				"cachedurationinseconds": func(p string, v any) { o.CacheDurationInSeconds = d.int(p, v, o.CacheDurationInSeconds, 0, 86400) },
				"servestaledurationinseconds": func(p string, v any) {
					o.ServeStaleDurationInSeconds = d.int(p, v, o.ServeStaleDurationInSeconds, 0, 86400)
				},
				"servestale": func(p string, v any) {
					o.ServeStale = ServeStale(d.enum(p, v, string(o.ServeStale), ServeStaleVerify, ServeStaleImmediate, ServeStaleDisable))
				},
				"healthcheck": func(p string, v any) { o.HealthCheck = d.healthCheck(p, v) },
				"failfastallunhealthyupstreams": func(p string, v any) {
					b := d.bool(p, v, false)
					o.FailfastAllUnhealthyUpstreams = &b
				},
			})
		}
		out[norm] = o
	}
	return out
}

// healthCheck decodes AKS's healthCheck {duration, noRec, domain}; a
// duration is required (it is what turns the setting on).
func (d *decoder) healthCheck(path string, v any) *HealthCheck {
	hc := &HealthCheck{}
	durSet := false
	d.fields(path, v, map[string]func(string, any){
		"duration": func(p string, v any) {
			durSet = true
			s, ok := v.(string)
			dur, err := time.ParseDuration(s)
			if !ok || err != nil {
				d.fail(p, v, `must be a duration such as "1s"`)
				return
			}
			if dur < MinHealthCheckDuration || dur > MaxHealthCheckDuration {
				d.fail(p, v, "must be between %s and %s", MinHealthCheckDuration, MaxHealthCheckDuration)
				return
			}
			hc.Duration = dur
		},
		"norec":  func(p string, v any) { hc.NoRec = d.bool(p, v, false) },
		"domain": func(p string, v any) { hc.Domain = d.zone(p, v, "") },
	})
	if _, isMap := v.(map[string]any); isMap && !durSet {
		d.fail(join(path, "duration"), nil, "is required (the probe interval, such as \"1s\")")
	}
	if hc.Duration == 0 {
		return nil
	}
	return hc
}

// enum matches v case-insensitively against the allowed values (string
// constants of one enum type) and returns the canonical spelling.
func (d *decoder) enum(path string, v any, keep string, allowed ...any) string {
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = fmt.Sprint(a)
	}
	if s, ok := v.(string); ok {
		for _, name := range names {
			if strings.EqualFold(s, name) {
				return name
			}
		}
	}
	d.fail(path, v, "must be one of %s", strings.Join(names, ", "))
	return keep
}

func (d *decoder) int(path string, v any, keep, lo, hi int) int {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case uint64:
		if x > math.MaxInt32 {
			n = math.MaxInt64
		} else {
			n = int64(x)
		}
	case float64:
		if x != math.Trunc(x) {
			d.fail(path, v, "must be a whole number")
			return keep
		}
		n = int64(x)
	default:
		d.fail(path, v, "must be a whole number")
		return keep
	}
	if n < int64(lo) || n > int64(hi) {
		d.fail(path, v, "must be between %d and %d", lo, hi)
		return keep
	}
	return int(n)
}

func (d *decoder) bool(path string, v any, keep bool) bool {
	b, ok := v.(bool)
	if !ok {
		d.fail(path, v, "must be true or false")
		return keep
	}
	return b
}

func (d *decoder) port(path string, v any, keep uint16) uint16 {
	return uint16(d.int(path, v, int(keep), 1, 65535))
}

func (d *decoder) addr(path string, v any, keep netip.Addr) netip.Addr {
	s, ok := v.(string)
	if !ok {
		d.fail(path, v, "must be an IP address")
		return keep
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		d.fail(path, v, "must be an IP address")
		return keep
	}
	if a.IsUnspecified() || a.IsMulticast() {
		d.fail(path, v, "must be a unicast address a listener can bind")
		return keep
	}
	return a.Unmap()
}

func (d *decoder) strings(path string, v any) []string {
	list, ok := v.([]any)
	if !ok {
		if s, ok := v.(string); ok {
			list = []any{s}
		} else {
			d.fail(path, v, "must be a list of strings")
			return nil
		}
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok || s == "" {
			d.fail(fmt.Sprintf("%s[%d]", path, i), e, "must be a non-empty string")
			continue
		}
		out = append(out, s)
	}
	return out
}

// upstreams parses a list of ip or ip:port ([v6]:port) server addresses.
func (d *decoder) upstreams(path string, v any) []Upstream {
	var out []Upstream
	for i, s := range d.strings(path, v) {
		u, err := ParseUpstream(s)
		if err != nil {
			d.fail(fmt.Sprintf("%s[%d]", path, i), s, "%v", err)
			continue
		}
		out = append(out, u)
	}
	return out // an empty list is reported by validate
}

// ParseUpstream parses "ip", "ip:port" or "[ipv6]:port"; the port defaults to 53.
func ParseUpstream(s string) (Upstream, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return Upstream{}, fmt.Errorf("not a unicast server address")
		}
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("must be ip or ip:port")
	}
	if ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
		return Upstream{}, fmt.Errorf("not a usable server address")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func (d *decoder) hostPort(path string, v any, keep string) string {
	s, ok := v.(string)
	if !ok {
		d.fail(path, v, "must be host:port")
		return keep
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		d.fail(path, v, "must be ip:port (a bare :port would bind every address; write 0.0.0.0:port to ask for that)")
		return keep
	}
	if ap.Port() == 0 {
		d.fail(path, v, "port must be between 1 and 65535")
		return keep
	}
	return s
}

func (d *decoder) duration(path string, v any, keep time.Duration) time.Duration {
	s, ok := v.(string)
	if !ok {
		d.fail(path, v, `must be a duration such as "30s"`)
		return keep
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.fail(path, v, `must be a duration such as "30s"`)
		return keep
	}
	if dur < time.Second || dur > time.Hour {
		d.fail(path, v, "must be between 1s and 1h")
		return keep
	}
	return dur
}

func (d *decoder) linkName(path string, v any, keep string) string {
	s, ok := v.(string)
	if !ok || s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t") || s == "lo" {
		d.fail(path, v, "must be a link name of 1 to 15 characters without '/' or spaces, other than lo")
		return keep
	}
	return s
}

func (d *decoder) absPath(path string, v any, keep string) string {
	s, ok := v.(string)
	if !ok || !strings.HasPrefix(s, "/") {
		d.fail(path, v, "must be an absolute path")
		return keep
	}
	return s
}

// bytes parses a byte count: a number, or a number with a Ki, Mi or Gi suffix.
func (d *decoder) bytes(path string, v any, keep int64) int64 {
	n, err := ParseBytes(v)
	if err != nil {
		d.fail(path, v, "%v", err)
		return keep
	}
	if n < 1<<20 || n > 64<<30 {
		d.fail(path, v, "must be between 1Mi and 64Gi")
		return keep
	}
	return n
}

// ParseBytes parses a byte count such as 67108864, "64Mi" or "1Gi".
func ParseBytes(v any) (int64, error) {
	switch x := v.(type) {
	case int:
		return int64(x), nil
	case int64:
		return x, nil
	case float64:
		if x != math.Trunc(x) {
			return 0, fmt.Errorf("must be a whole number of bytes")
		}
		return int64(x), nil
	case string:
		mult := int64(1)
		s := strings.TrimSpace(x)
		for suffix, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
			if strings.HasSuffix(s, suffix) {
				mult, s = m, strings.TrimSuffix(s, suffix)
				break
			}
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/mult {
			return 0, fmt.Errorf("must be a byte count such as 67108864, 64Mi or 1Gi")
		}
		return n * mult, nil
	}
	return 0, fmt.Errorf("must be a byte count such as 67108864, 64Mi or 1Gi")
}

// zone normalises a zone name to lower case with a trailing dot, or reports it.
func (d *decoder) zone(path string, v any, keep string) string {
	s, ok := v.(string)
	if !ok {
		d.fail(path, v, "must be a DNS zone name")
		return keep
	}
	z, err := NormalizeZone(s)
	if err != nil {
		d.fail(path, v, "%v", err)
		return keep
	}
	return z
}

// NormalizeZone lower-cases a zone and adds the trailing dot, checking that
// it is a valid DNS name (labels of 1-63 letters, digits, '-' or '_').
func NormalizeZone(s string) (string, error) {
	z := strings.ToLower(strings.TrimSpace(s))
	if z == "." {
		return z, nil
	}
	z = strings.TrimSuffix(z, ".")
	if z == "" {
		return "", fmt.Errorf("must be a DNS zone name")
	}
	if len(z) > 253 {
		return "", fmt.Errorf("zone name longer than 253 characters")
	}
	for _, label := range strings.Split(z, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("each label must be 1 to 63 characters")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("label %q has a character other than a-z, 0-9, '-' or '_'", label)
			}
		}
	}
	return z + ".", nil
}
