package nodecache

// AnswerWire answers a raw query from this block's entries, for localdns's
// socket front end (internal/fastpath): fresh hits, and stale answers where
// this block serves stale immediately (refreshing in the background). It
// returns 0 when the query must go through the plugin chain.
func (h *Nodecache) AnswerWire(query []byte, tcp bool, out []byte) int {
	proto := UDP
	if tcp {
		proto = TCP
	}
	n, status := h.store.ServeWire(h.ns, query, proto, h.store.now(), out)
	if status == Miss {
		return 0
	}
	return n
}
