// Package nodecache is localdns's node-local DNS cache, a CoreDNS plugin used
// instead of the stock cache plugin.
//
// Why not the stock cache: it keeps about 10k entries per server block, evicts
// at random, forgets everything on restart and rebuilds every answer from a
// dns.Msg. nodecache instead keeps
//
//   - one byte-weighted memory budget for the whole process, enforced by a
//     sharded S3-FIFO store (hot names survive a flood of one-off names);
//   - the answer as wire bytes with precomputed TTL offsets, so a hit only
//     rewrites ID, flags, question casing and TTLs into a pooled buffer;
//   - serve-stale per RFC 8767 (immediate or verify) with Extended DNS Error 3;
//   - one upstream query per key for concurrent misses (coalescing);
//   - prefetch of hot names before they expire;
//   - a checksummed snapshot on disk, written periodically and at shutdown and
//     restored at start, so a restart with every upstream down still answers.
//
// Process-wide state. The store is a package-level value reached through
// Shared. This is plugin-registration-scope state and deliberate: every
// nodecache block of every server (node and cluster listener) must draw on one
// memory budget, and the entries must survive a CoreDNS reload, in which caddy
// builds a new instance and runs setup again. Answers are nevertheless never
// shared between blocks: each block has its own Namespace (a hash of its zone
// and listen address), which is part of every key. A socket front-end outside
// CoreDNS's server answers hits without a dns.Msg through Store.ServeWire.
package nodecache
