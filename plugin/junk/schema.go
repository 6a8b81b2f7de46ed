package junk

import "strings"

// The Kubernetes DNS schema check.
//
// The schema (https://github.com/kubernetes/dns/blob/master/docs/specification.md)
// and CoreDNS's kubernetes plugin, which serves it, give every name under the
// cluster domain one of these shapes (labels left of the cluster domain):
//
//	(apex)                                   empty non-terminal
//	svc | pod                                empty non-terminals
//	dns-version                              TXT with the schema version
//	dns, ns.dns                              CoreDNS's name server name
//	namespace.svc                            empty non-terminal
//	service.namespace.svc                    service
//	endpoint.service.namespace.svc           endpoint of a headless service
//	_port._proto.service.namespace.svc       SRV for a named port
//	topozone.pin|prefer._zone.service.namespace.svc
//	                                         zone-scoped name (CoreDNS 1.15
//	                                         `zonal`; topozone may span labels)
//	namespace.pod, ip.namespace.pod          pod records
//
// Two CoreDNS quirks widen this and are kept, because junk only answers what
// the cluster's CoreDNS would answer NXDOMAIN itself:
//
//   - Two labels left of the service are parsed as port and protocol with or
//     without their underscores, and match when the protocol is TCP, UDP or
//     SCTP: http.tcp.service.namespace.svc answers like _http._tcp....
//   - Pod names ignore up to two labels left of the pod IP:
//     x.1-2-3-4.namespace.pod answers 1.2.3.4 (plugin/kubernetes findPods
//     never looks at the endpoint, port or protocol it parsed).
//
// Everything else is NXDOMAIN in CoreDNS as well: a second-level label other
// than the ones above (api.github.com.cluster.local), four labels before svc
// that are not port and protocol (api.github.com.default.svc.cluster.local),
// five or more that are not a zone-scoped name, and six or more before pod.
//
// Every rule here only ever looks at labels counted from the cluster domain,
// and a name that passes has a parent that passes: NXDOMAIN for a name denies
// its whole subtree (RFC 8020), so no name below a junk answer may exist.

// kubernetesJunk reports whether the first n labels of l, those left of the
// cluster domain, form a name the Kubernetes DNS schema cannot produce.
func kubernetesJunk(l *labels, n int) bool {
	if n == 0 {
		return false // the cluster domain itself
	}
	second := n - 1 // the label just left of the cluster domain
	switch {
	case l.is(second, "svc"):
		return serviceJunk(l, second)
	case l.is(second, "pod"):
		// ip.namespace plus the two labels CoreDNS ignores.
		return second > 4
	case l.is(second, "dns-version"):
		return second > 0
	case l.is(second, "dns"):
		return second > 1 || (second == 1 && !l.is(0, "ns"))
	}
	return true
}

// serviceJunk judges the m labels left of svc: [..., service, namespace].
func serviceJunk(l *labels, m int) bool {
	left := m - 2 // labels left of the service
	switch {
	case left <= 1:
		// svc, namespace.svc, service.namespace.svc and
		// endpoint.service.namespace.svc.
		return false
	case left == 2:
		// _port._proto, or the empty non-terminal pin|prefer._zone.
		if isProtocol(l.label(1)) {
			return false
		}
		return !(l.is(1, zoneLabel) && isZoneDirective(l.label(0)))
	default:
		// topozone.pin|prefer._zone: the zone value may span labels.
		return !(l.is(left-1, zoneLabel) && isZoneDirective(l.label(left-2)))
	}
}

// zoneLabel anchors CoreDNS's zone-scoped service names.
const zoneLabel = "_zone"

func isZoneDirective(s string) bool {
	return strings.EqualFold(s, "pin") || strings.EqualFold(s, "prefer")
}

// isProtocol reports whether s, with or without its leading underscore, is a
// protocol a Kubernetes service port can have.
func isProtocol(s string) bool {
	s = strings.TrimPrefix(s, "_")
	return strings.EqualFold(s, "tcp") || strings.EqualFold(s, "udp") || strings.EqualFold(s, "sctp")
}
