package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// udpPool sends the UDP queries of one upstream over a bounded set of
// connected UDP sockets ("flows"). Each socket has its own source port, so
// behind a service IP each is one conntrack entry and one DNAT choice. A
// query picks a socket at random; a socket is retired after its lifetime, or
// at once when a query on it times out or it reports an error (ICMP
// unreachable), and a new socket (new source port, new DNAT choice) takes
// its slot. So the conntrack entries the upstream costs are bounded by
// size × (conntrack timeout / lifetime + 1), whatever the query rate, and
// over time the flows re-hash over the service's backends.
//
// Replies are matched to queries by ID and question. Each query gets a
// random ID that is unique among the socket's queries in flight; a reply
// whose ID is not in flight (late, after its query timed out) or whose
// question differs is dropped, never given to another query.
type udpPool struct {
	raddr    *net.UDPAddr
	lifetime time.Duration // 0: a socket per query; < 0: retired on errors only
	// unmatched counts dropped replies (late, unknown ID, wrong question).
	unmatched prometheus.Counter

	mu     sync.Mutex
	slots  []*udpSock
	closed bool
}

// udpSock is one socket of the pool, read by its own goroutine.
type udpSock struct {
	pool    *udpPool
	conn    *net.UDPConn
	expires time.Time // zero: no lifetime

	mu      sync.Mutex
	pending map[uint16]*waiter
	retired bool // out of its slot; closed once pending is empty
	closed  bool
}

// waiter is one query in flight on a socket. Waiters are reused (with
// their channel and timer) once no one can send to them any more.
type waiter struct {
	q  dns.Question
	ch chan poolReply // buffered: the reader never blocks on it
	t  *time.Timer    // the try's timeout; stopped when not in use
}

var waiters = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ch: make(chan poolReply, 1), t: t}
}}

type poolReply struct {
	m   *dns.Msg
	err error
}

// errRetired is returned to the queries still in flight on a socket that
// reported an error; the caller may try again on another socket.
var errRetired = errors.New("upstream socket failed")

func newUDPPool(addr string, size int, lifetime time.Duration, unmatched prometheus.Counter) (*udpPool, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	if size < 1 {
		size = 1
	}
	return &udpPool{raddr: raddr, lifetime: lifetime, unmatched: unmatched, slots: make([]*udpSock, size)}, nil
}

// exchange sends the packed query wire (its ID is overwritten) with question
// q and waits at most timeout (and until ctx is done) for the matching
// reply. The reply's ID is that of the wire as given.
func (p *udpPool) exchange(ctx context.Context, wire []byte, q dns.Question, timeout time.Duration) (*dns.Msg, error) {
	if len(wire) < 12 {
		return nil, fmt.Errorf("query of %d bytes: %w", len(wire), dns.ErrShortRead)
	}
	origID := uint16(wire[0])<<8 | uint16(wire[1])
	w := waiters.Get().(*waiter)
	w.q = q
	s, id, err := p.register(w)
	if err != nil {
		w.release()
		return nil, err
	}
	wire[0], wire[1] = byte(id>>8), byte(id)
	_, err = s.conn.Write(wire)
	wire[0], wire[1] = byte(origID>>8), byte(origID)
	if err != nil {
		if s.unregister(id) {
			w.release()
		}
		s.retire()
		return nil, fmt.Errorf("write: %w", err)
	}
	// Go 1.23 timers: after Reset no value from an earlier use arrives.
	w.t.Reset(timeout)
	select {
	case r := <-w.ch:
		// The reader or fail took w out of pending before sending: no one
		// else sends to it.
		w.t.Stop()
		w.release()
		if r.err != nil {
			return nil, r.err
		}
		r.m.Id = origID
		return r.m, nil
	case <-w.t.C:
		// A flow that lost an answer may lead to a dead backend: move on.
		if s.unregister(id) {
			w.release()
		}
		s.retire()
		return nil, fmt.Errorf("read: %w", errTimeout)
	case <-ctx.Done():
		w.t.Stop()
		if s.unregister(id) {
			w.release()
		}
		return nil, ctx.Err()
	}
}

// release returns a waiter that no one will send to any more to the pool.
// A waiter that a reply or a failure was already taken for when its query
// gave up is not released: that send is still to come.
func (w *waiter) release() {
	w.q = dns.Question{}
	waiters.Put(w)
}

// errTimeout is a query that got no answer within its time.
var errTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// register picks a socket at random (replacing one that is missing, retired
// or past its lifetime) and registers w on it under a random ID unique among
// that socket's queries in flight.
func (p *udpPool) register(w *waiter) (*udpSock, uint16, error) {
	for {
		s, err := p.pick()
		if err != nil {
			return nil, 0, err
		}
		s.mu.Lock()
		if s.retired {
			// Retired between pick and here (an error on it): pick again.
			s.mu.Unlock()
			continue
		}
		if len(s.pending) >= 1<<16-1 {
			s.mu.Unlock()
			return nil, 0, errors.New("65535 queries in flight on one upstream socket")
		}
		id := uint16(rand.Uint32())
		for s.pending[id] != nil {
			id = uint16(rand.Uint32())
		}
		s.pending[id] = w
		s.mu.Unlock()
		return s, id, nil
	}
}

// pick returns the socket of a random slot, opening a new one when the slot
// is empty or its socket is retired or expired.
func (p *udpPool) pick() (*udpSock, error) {
	i := rand.IntN(len(p.slots))
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("upstream stopped")
	}
	s := p.slots[i]
	if s != nil && !s.isRetired() && (s.expires.IsZero() && p.lifetime < 0 || now.Before(s.expires)) {
		return s, nil
	}
	if s != nil {
		s.retire()
	}
	s, err := p.dial(now)
	if err != nil {
		p.slots[i] = nil
		return nil, err
	}
	p.slots[i] = s
	return s, nil
}

// dial opens a connected UDP socket (a new source port) with IP_RECVERR, so
// ICMP errors (unreachable host or port) are reported on it, and starts its
// reader.
func (p *udpPool) dial(now time.Time) (*udpSock, error) {
	conn, err := net.DialUDP("udp", nil, p.raddr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.raddr, err)
	}
	if rc, err := conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if p.raddr.IP.To4() != nil {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVERR, 1)
			} else {
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_RECVERR, 1)
			}
		})
	}
	s := &udpSock{pool: p, conn: conn, pending: map[uint16]*waiter{}}
	if p.lifetime >= 0 {
		s.expires = now.Add(p.lifetime)
	}
	go s.read()
	return s, nil
}

// close retires every socket; queries in flight fail.
func (p *udpPool) close() {
	p.mu.Lock()
	p.closed = true
	slots := p.slots
	p.slots = make([]*udpSock, len(slots))
	p.mu.Unlock()
	for _, s := range slots {
		if s != nil {
			s.fail(errors.New("upstream stopped"))
		}
	}
}

// open reports the number of open sockets in the slots (for tests).
func (p *udpPool) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.slots {
		if s != nil && !s.isRetired() {
			n++
		}
	}
	return n
}

// read delivers the socket's replies until it is closed or fails.
func (s *udpSock) read() {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An ICMP error or another failure of the flow: the queries
			// on it fail at once and may try another socket.
			s.fail(fmt.Errorf("%w: %w", errRetired, err))
			return
		}
		s.deliver(buf[:n])
	}
}

// deliver hands a reply to the query in flight with its ID and question, or
// drops it.
func (s *udpSock) deliver(b []byte) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil || !m.Response {
		// Garbage, or a query (QR=0) sent back at us: never an answer.
		s.pool.unmatched.Inc()
		return
	}
	s.mu.Lock()
	w := s.pending[m.Id]
	if w == nil || !sameQuestion(w.q, m.Question) {
		s.mu.Unlock()
		s.pool.unmatched.Inc()
		return
	}
	delete(s.pending, m.Id)
	closeNow := s.retired && len(s.pending) == 0 && !s.closed
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	w.ch <- poolReply{m: m}
	if closeNow {
		s.conn.Close()
	}
}

func sameQuestion(q dns.Question, got []dns.Question) bool {
	if q.Name == "" { // a query without a question
		return len(got) == 0
	}
	return len(got) == 1 && got[0].Qtype == q.Qtype && got[0].Qclass == q.Qclass && strings.EqualFold(got[0].Name, q.Name)
}

// unregister removes a query that gave up and reports whether it was still
// in flight (false: a reply or a failure was taken for it and is sent to
// its waiter). A retired socket with nothing left in flight is closed.
func (s *udpSock) unregister(id uint16) bool {
	s.mu.Lock()
	_, inFlight := s.pending[id]
	delete(s.pending, id)
	closeNow := s.retired && len(s.pending) == 0 && !s.closed
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.conn.Close()
	}
	return inFlight
}

func (s *udpSock) isRetired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retired
}

// retire takes the socket out of use: it leaves its slot (if still there)
// and is closed once its queries in flight are done.
func (s *udpSock) retire() {
	s.mu.Lock()
	s.retired = true
	closeNow := len(s.pending) == 0 && !s.closed
	if closeNow {
		s.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.conn.Close()
	}
}

// fail retires and closes the socket and fails its queries in flight.
func (s *udpSock) fail(err error) {
	s.mu.Lock()
	s.retired = true
	pending := s.pending
	s.pending = map[uint16]*waiter{}
	closeNow := !s.closed
	s.closed = true
	s.mu.Unlock()
	for _, w := range pending {
		w.ch <- poolReply{err: err}
	}
	if closeNow {
		s.conn.Close()
	}
}
