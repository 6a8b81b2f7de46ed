package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/localdns/localdns/internal/testbin"
)

// rawServer is a UDP socket on 127.0.0.1 the test answers by hand: every
// query it receives is passed to the test with its source.
type rawServer struct {
	conn *net.UDPConn
	got  chan rawQuery
}

type rawQuery struct {
	m    *dns.Msg
	from *net.UDPAddr
}

func startRaw(t *testing.T) *rawServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{conn: conn, got: make(chan rawQuery, 4096)}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) == nil {
				s.got <- rawQuery{m, from}
			}
		}
	}()
	return s
}

func (s *rawServer) addr() string { return s.conn.LocalAddr().String() }

// next returns the next query the server received.
func (s *rawServer) next(t *testing.T) rawQuery {
	t.Helper()
	select {
	case q := <-s.got:
		return q
	case <-time.After(5 * time.Second):
		t.Fatal("no query reached the server")
	}
	return rawQuery{}
}

// reply answers q with an A record ip, with the given ID and question name.
func (s *rawServer) reply(t *testing.T, q rawQuery, id uint16, name, ip string) {
	t.Helper()
	m := new(dns.Msg)
	m.SetReply(q.m)
	m.Id = id
	m.Question[0].Name = name
	rr, _ := dns.NewRR(name + " 60 IN A " + ip)
	m.Answer = append(m.Answer, rr)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.conn.WriteToUDP(b, q.from); err != nil {
		t.Fatal(err)
	}
}

func newTestPool(t *testing.T, addr string, size int, lifetime time.Duration) (*udpPool, prometheus.Counter) {
	t.Helper()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "unmatched"})
	p, err := newUDPPool(addr, size, lifetime, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p, c
}

type result struct {
	m   *dns.Msg
	err error
}

// send starts one query for name with ID 4242 through p and returns where
// its result will arrive.
func send(ctx context.Context, p *udpPool, name string, timeout time.Duration) <-chan result {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	q.Id = 4242
	wire, _ := q.Pack()
	ch := make(chan result, 1)
	go func() {
		m, err := p.exchange(ctx, wire, q.Question[0], timeout)
		ch <- result{m, err}
	}()
	return ch
}

func answerA(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// TestPoolRandomIDs: the upstream sees a fresh random ID per query, never the
// client's, and the client gets its own ID back.
func TestPoolRandomIDs(t *testing.T) {
	srv := startRaw(t)
	p, _ := newTestPool(t, srv.addr(), 1, -1)
	ids := map[uint16]bool{}
	const n = 200
	for range n {
		ch := send(context.Background(), p, "a.example.", 2*time.Second)
		q := srv.next(t)
		ids[q.m.Id] = true
		srv.reply(t, q, q.m.Id, "a.example.", "192.0.2.1")
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.m.Id != 4242 {
			t.Fatalf("client got ID %d, want its own 4242", r.m.Id)
		}
	}
	// 200 draws from 65536: a repeat is likely (26%), two more are not.
	if len(ids) < n-2 || ids[4242] && len(ids) < n {
		t.Errorf("%d queries used %d distinct upstream IDs, want about %d", n, len(ids), n)
	}
}

// TestPoolLateAndMismatchedRepliesDropped: on one shared socket, a reply to a
// query that gave up, a reply with an unknown ID and a reply with the right
// ID but another question are all dropped; the query in flight gets only
// its own answer.
func TestPoolLateAndMismatchedRepliesDropped(t *testing.T) {
	srv := startRaw(t)
	p, unmatched := newTestPool(t, srv.addr(), 1, -1)

	// Query A gives up (its context ends; the socket is kept).
	ctx, cancel := context.WithCancel(context.Background())
	chA := send(ctx, p, "a.example.", 5*time.Second)
	qa := srv.next(t)
	cancel()
	if r := <-chA; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("query A: got %v, want canceled", r.err)
	}

	// Query B is in flight on the same socket.
	chB := send(context.Background(), p, "b.example.", 5*time.Second)
	qb := srv.next(t)
	if qa.from.Port != qb.from.Port {
		t.Fatalf("queries used ports %d and %d, want one shared socket", qa.from.Port, qb.from.Port)
	}
	srv.reply(t, qa, qa.m.Id, "a.example.", "192.0.2.66")   // late answer to A
	srv.reply(t, qb, qb.m.Id^1, "b.example.", "192.0.2.67") // unknown ID
	srv.reply(t, qb, qb.m.Id, "x.example.", "192.0.2.68")   // B's ID, another question
	testbin.WaitFor(t, 5*time.Second, "three replies dropped", func() bool { return counterValue(unmatched) == 3 })
	select {
	case r := <-chB:
		t.Fatalf("query B got %v %v before its own answer", r.m, r.err)
	default:
	}
	srv.reply(t, qb, qb.m.Id, "B.EXAMPLE.", "192.0.2.2") // its answer (case may differ)
	r := <-chB
	if r.err != nil || answerA(r.m) != "192.0.2.2" {
		t.Fatalf("query B: got %v %v, want its own answer 192.0.2.2", r.m, r.err)
	}
}

// TestPoolIDCollisions: 1500 queries in flight at once on one socket get
// distinct IDs (random IDs alone would repeat about 17 times), and each gets
// its own answer.
func TestPoolIDCollisions(t *testing.T) {
	srv := startRaw(t)
	p, _ := newTestPool(t, srv.addr(), 1, -1)
	const n, batch = 1500, 100
	name := func(i int) string { return dns.Fqdn(fmt.Sprintf("q%d.example", i)) }
	chs := make([]<-chan result, n)
	qs := make([]rawQuery, n)
	ids := map[uint16]bool{}
	// In batches the server's receive buffer holds; all stay in flight.
	for b := 0; b < n; b += batch {
		for i := b; i < b+batch; i++ {
			chs[i] = send(context.Background(), p, name(i), 10*time.Second)
		}
		for i := b; i < b+batch; i++ {
			qs[i] = srv.next(t)
			ids[qs[i].m.Id] = true
		}
	}
	if len(ids) != n {
		t.Fatalf("%d queries in flight had %d distinct IDs", n, len(ids))
	}
	// Answer in batches too, in the order received (not the order sent):
	// every query must get its own answer.
	byName := map[string]int{}
	for i := range n {
		byName[name(i)] = i
	}
	for b := 0; b < n; b += batch {
		for _, q := range qs[b : b+batch] {
			srv.reply(t, q, q.m.Id, q.m.Question[0].Name, "192.0.2.9")
		}
		for _, q := range qs[b : b+batch] {
			i := byName[q.m.Question[0].Name]
			r := <-chs[i]
			if r.err != nil || r.m.Question[0].Name != name(i) {
				t.Fatalf("query %d: got %v %v", i, r.m, r.err)
			}
		}
	}
}

// TestPoolRetiresFailedSockets: a query that times out retires its socket,
// and so does an ICMP error (closed port), which also fails the queries in
// flight on it at once; the next query goes out on a new socket (a new
// source port, so a new DNAT choice behind a service IP).
func TestPoolRetiresFailedSockets(t *testing.T) {
	srv := startRaw(t)
	p, _ := newTestPool(t, srv.addr(), 1, -1)

	ch := send(context.Background(), p, "a.example.", 100*time.Millisecond)
	q1 := srv.next(t)
	if r := <-ch; r.err == nil || !isTimeout(r.err) {
		t.Fatalf("unanswered query: got %v, want a timeout", r.err)
	}
	ch = send(context.Background(), p, "b.example.", 2*time.Second)
	q2 := srv.next(t)
	if q2.from.Port == q1.from.Port {
		t.Fatalf("query after a timeout used the same source port %d", q1.from.Port)
	}
	srv.reply(t, q2, q2.m.Id, "b.example.", "192.0.2.1")
	if r := <-ch; r.err != nil {
		t.Fatal(r.err)
	}

	// The server goes away: the next query's datagram draws an ICMP port
	// unreachable, which fails it at once and retires the socket.
	srv.conn.Close()
	start := time.Now()
	if r := <-send(context.Background(), p, "c.example.", 5*time.Second); !errors.Is(r.err, errRetired) {
		t.Fatalf("query to a closed port: got %v, want the socket's error", r.err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("ICMP error took %s to fail the query", took)
	}
	if p.open() != 0 {
		t.Errorf("failed socket still in the pool")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPoolBounded: however many queries, at most size sockets are open, and a
// lifetime of 0 gives every query its own socket.
func TestPoolBounded(t *testing.T) {
	srv := startRaw(t)
	go func() { // answer everything
		for q := range srv.got {
			m := new(dns.Msg)
			m.SetReply(q.m)
			b, _ := m.Pack()
			srv.conn.WriteToUDP(b, q.from)
		}
	}()
	p, _ := newTestPool(t, srv.addr(), 4, -1)
	var wg sync.WaitGroup
	for range 20 { // 20 clients, 20 queries each
		wg.Go(func() {
			for range 20 {
				if r := <-send(context.Background(), p, "a.example.", 5*time.Second); r.err != nil {
					t.Error(r.err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := p.open(); n < 1 || n > 4 {
		t.Errorf("%d sockets open after 400 queries, want at most the pool's 4", n)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestPoolUnregisterReportsTaken: a query that gives up learns whether a
// reply or a failure was already taken for it (and so is still to be sent
// to its waiter, which then must not be reused).
func TestPoolUnregisterReportsTaken(t *testing.T) {
	srv := startRaw(t)
	p, _ := newTestPool(t, srv.addr(), 1, -1)
	q := dns.Question{Name: "a.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}

	w := &waiter{q: q, ch: make(chan poolReply, 1)}
	s, id, err := p.register(w)
	if err != nil {
		t.Fatal(err)
	}
	if !s.unregister(id) {
		t.Fatal("unregister of a query in flight reported it taken")
	}

	// A reply delivered, then the query gives up (its timer fired first).
	s, id, _ = p.register(w)
	reply := new(dns.Msg)
	reply.SetQuestion(q.Name, q.Qtype)
	reply.Response, reply.Id = true, id
	b, _ := reply.Pack()
	s.deliver(b)
	if s.unregister(id) {
		t.Fatal("unregister after its reply was delivered reported it in flight")
	}
	if r := <-w.ch; r.m == nil || r.m.Id != id {
		t.Fatalf("waiter got %v, want its reply", r)
	}

	// The socket fails, then the query gives up.
	s, id, _ = p.register(w)
	s.fail(errRetired)
	if s.unregister(id) {
		t.Fatal("unregister after the socket failed reported it in flight")
	}
	if r := <-w.ch; !errors.Is(r.err, errRetired) {
		t.Fatalf("waiter got %v, want the failure", r)
	}
}

// TestPoolRepliesRacingTimeouts: answers arrive around the moment their
// queries time out, over and over on a few sockets, so waiters are reused
// while late replies are delivered; every answer a query gets is its own.
func TestPoolRepliesRacingTimeouts(t *testing.T) {
	srv := startRaw(t)
	p, _ := newTestPool(t, srv.addr(), 2, -1)
	go func() {
		for q := range srv.got {
			m := new(dns.Msg)
			m.SetReply(q.m)
			b, _ := m.Pack()
			go func() {
				time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
				srv.conn.WriteToUDP(b, q.from)
			}()
		}
	}()
	const workers, each = 8, 150
	var wg sync.WaitGroup
	var answered, timedOut atomic.Int64
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				q := new(dns.Msg)
				q.SetQuestion(fmt.Sprintf("q%d-%d.example.", g, i), dns.TypeA)
				wire, _ := q.Pack()
				m, err := p.exchange(context.Background(), wire, q.Question[0], time.Millisecond)
				switch {
				case err == nil:
					if len(m.Question) != 1 || m.Question[0].Name != q.Question[0].Name || m.Id != q.Id {
						t.Errorf("query %s (ID %d) got the answer to %v (ID %d)", q.Question[0].Name, q.Id, m.Question, m.Id)
						return
					}
					answered.Add(1)
				case isTimeout(err) || errors.Is(err, errRetired):
					timedOut.Add(1)
				default:
					t.Errorf("query %s: %v", q.Question[0].Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d answered, %d timed out", answered.Load(), timedOut.Load())
	if answered.Load() == 0 || timedOut.Load() == 0 {
		t.Errorf("%d answered and %d timed out: the replies did not race the timeouts", answered.Load(), timedOut.Load())
	}
}
