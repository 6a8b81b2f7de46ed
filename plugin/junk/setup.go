package junk

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"

	"github.com/miekg/dns"
)

func init() { plugin.Register(pluginName, setup) }

const (
	// defaultTTL is the negative TTL. Junk names never become real, but a
	// wrong rule should heal within a minute of being fixed, and answering
	// again is cheap.
	defaultTTL = 60
	// maxTTL is one day: RFC 2308 section 5 reports longer negative TTLs
	// as problematic.
	maxTTL = 86400
)

func setup(c *caddy.Controller) error {
	j, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		j.Next = next
		return j
	})
	return nil
}

func parse(c *caddy.Controller) (*Junk, error) {
	var (
		rules  []Rule
		ttl    = uint32(defaultTTL)
		ttlSet bool
		zones  = map[string]string{} // zone -> rule kind, to reject a zone ruled twice
		blocks int
	)
	add := func(kind Kind, arg string, minimum int) error {
		zone, err := parseZone(arg)
		if err != nil {
			return c.Errf("%s: %v", kind, err)
		}
		if other, ok := zones[zone]; ok {
			return c.Errf("%s %s: zone already has a %s rule", kind, zone, other)
		}
		zones[zone] = kind.String()
		rules = append(rules, newRule(kind, zone, minimum))
		return nil
	}

	for c.Next() {
		if blocks++; blocks > 1 {
			return nil, plugin.ErrOnce
		}
		if len(c.RemainingArgs()) != 0 {
			return nil, c.ArgErr()
		}
		for c.NextBlock() {
			switch property := c.Val(); property {
			case "min_labels":
				args := c.RemainingArgs()
				if len(args) != 2 {
					return nil, c.ArgErr()
				}
				n, err := strconv.Atoi(args[1])
				if err != nil || n < 1 || n >= maxLabels {
					return nil, c.Errf("min_labels %s: %q is not a label count from 1 to %d", args[0], args[1], maxLabels-1)
				}
				if err := add(MinLabels, args[0], n); err != nil {
					return nil, err
				}
			case "zone", "kubernetes":
				kind := Zone
				if property == "kubernetes" {
					kind = Kubernetes
				}
				args := c.RemainingArgs()
				if len(args) == 0 {
					return nil, c.ArgErr()
				}
				for _, arg := range args {
					if err := add(kind, arg, 0); err != nil {
						return nil, err
					}
				}
			case "ttl":
				args := c.RemainingArgs()
				if len(args) != 1 {
					return nil, c.ArgErr()
				}
				if ttlSet {
					return nil, c.Err("ttl given twice")
				}
				v, err := strconv.ParseUint(args[0], 10, 32)
				if err != nil || v > maxTTL {
					return nil, c.Errf("ttl: %q is not a number of seconds from 0 to %d", args[0], maxTTL)
				}
				ttl, ttlSet = uint32(v), true
			default:
				return nil, c.Errf("unknown property %q", property)
			}
		}
	}
	if len(rules) == 0 {
		return nil, c.Err("no rules: want at least one of min_labels, zone, kubernetes")
	}
	return New(rules, ttl), nil
}

// parseZone checks and normalizes a rule's zone: a domain name below the
// root (a rule for the root would answer every name), without escapes.
func parseZone(s string) (string, error) {
	if _, ok := dns.IsDomainName(s); !ok || strings.ContainsRune(s, '\\') || strings.Contains(s, "..") {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	zone := strings.ToLower(dns.Fqdn(s))
	if zone == "." {
		return "", fmt.Errorf("the root zone cannot be junk")
	}
	return zone, nil
}
