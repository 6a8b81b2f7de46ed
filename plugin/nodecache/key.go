package nodecache

import (
	"encoding/binary"
	"hash/fnv"
	"hash/maphash"
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

// keyHasher hashes cache keys with a seed drawn once per process
// (hash/maphash), so that nobody who only sends queries can choose names
// that land in one shard's bucket or share one key: with a fixed hash such
// as FNV, colliding names are cheap to compute offline. A hash only picks the
// bucket; the store compares the full key before it answers, and coalescing
// compares it before it shares an upstream answer.
type keyHasher struct {
	seed maphash.Seed
	// fixed makes every key hash to 0 (tests: collisions on demand).
	fixed bool
}

func newKeyHasher() keyHasher { return keyHasher{seed: maphash.MakeSeed()} }

// keyOf hashes (namespace, DO, CD, type, class, lower-cased wire name)
// without allocating.
func (k *keyHasher) keyOf(ns Namespace, flags uint8, qtype, qclass uint16, name []byte) uint64 {
	var b [9 + maxNameWire]byte
	binary.BigEndian.PutUint32(b[0:], uint32(ns))
	b[4] = flags
	binary.BigEndian.PutUint16(b[5:], qtype)
	binary.BigEndian.PutUint16(b[7:], qclass)
	name = name[:min(len(name), maxNameWire)]
	for i, c := range name {
		b[9+i] = lower(c)
	}
	if k.fixed {
		return 0
	}
	return maphash.Bytes(k.seed, b[:9+len(name)])
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
