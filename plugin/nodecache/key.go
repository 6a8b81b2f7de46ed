package nodecache

import (
	"hash/fnv"
	"strings"
)

// Namespace separates the answers of different server blocks: the node and
// the cluster listener may both serve "." through different upstreams, so
// their answers must never be shared. It is part of every cache key.
type Namespace uint32

// NamespaceFor returns the namespace of the server block for zone listening
// on hosts (as given to bind, empty for all addresses) and port. It is stable
// across restarts so that snapshot entries find their block again.
func NamespaceFor(zone string, hosts []string, port string) Namespace {
	h := fnv.New32a()
	h.Write([]byte(strings.ToLower(zone)))
	h.Write([]byte{0})
	for _, host := range hosts {
		h.Write([]byte(host))
		h.Write([]byte{','})
	}
	h.Write([]byte{0})
	h.Write([]byte(port))
	return Namespace(h.Sum32())
}

const (
	flagDO = 1 << 0
	flagCD = 1 << 1
)

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// keyOf hashes (namespace, DO, CD, type, class, lower-cased wire name) with
// FNV-1a, without allocating. Collisions are harmless: the store compares the
// full key before it answers.
func keyOf(ns Namespace, flags uint8, qtype, qclass uint16, name []byte) uint64 {
	h := uint64(fnvOffset)
	mix := func(b byte) {
		h ^= uint64(b)
		h *= fnvPrime
	}
	mix(byte(ns >> 24))
	mix(byte(ns >> 16))
	mix(byte(ns >> 8))
	mix(byte(ns))
	mix(flags)
	mix(byte(qtype >> 8))
	mix(byte(qtype))
	mix(byte(qclass >> 8))
	mix(byte(qclass))
	for _, c := range name {
		mix(lower(c))
	}
	return h
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// equalFoldWire compares two wire-format names ASCII case-insensitively.
// Length bytes are below 64 and therefore never changed by lower.
func equalFoldWire(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lowerWire(name []byte) []byte {
	out := make([]byte, len(name))
	for i, c := range name {
		out[i] = lower(c)
	}
	return out
}

func queryFlags(do, cd bool) uint8 {
	var f uint8
	if do {
		f |= flagDO
	}
	if cd {
		f |= flagCD
	}
	return f
}
