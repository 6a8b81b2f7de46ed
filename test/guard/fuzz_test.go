package guard

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// envInt reads a positive integer knob from the environment.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// baseQueries are the valid queries the fuzzer starts from.
func baseQuery(r *rand.Rand) *dns.Msg {
	names := []string{"www.diff.test.", "big40.diff.test.", "alias.diff.test.", "nosuch.diff.test.",
		"x.wild.diff.test.", "kube-dns.kube-system.svc.cluster.local.", "10.0.0.10.in-addr.arpa.",
		"a.b.c.d.internal.cloudapp.net.", "x.reddog.microsoft.com.", "WwW.DiFf.TeSt.",
		fmt.Sprintf("r%d.diff.test.", r.IntN(1000)), "health-check.localdns.local.", "."}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX, dns.TypeSRV, dns.TypePTR, dns.TypeANY, dns.TypeSOA, 65535}
	m := new(dns.Msg)
	m.SetQuestion(names[r.IntN(len(names))], types[r.IntN(len(types))])
	m.CheckingDisabled = r.IntN(4) == 0
	if r.IntN(2) == 0 {
		m.SetEdns0([]uint16{0, 100, 512, 1232, 4096, 65535}[r.IntN(6)], r.IntN(2) == 0)
		o := m.IsEdns0()
		switch r.IntN(5) {
		case 0:
			o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		case 1:
			o.Option = append(o.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0)})
		case 2:
			o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		case 3:
			o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, r.IntN(64))})
		}
	}
	return m
}

// mutate applies one kind of damage to a packed query.
func mutate(r *rand.Rand, b []byte) []byte {
	switch r.IntN(12) {
	case 0: // valid
	case 1: // flip bytes
		for n := 1 + r.IntN(8); n > 0 && len(b) > 0; n-- {
			b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		}
	case 2: // truncate
		b = b[:r.IntN(len(b)+1)]
	case 3: // extend
		for n := 1 + r.IntN(64); n > 0; n-- {
			b = append(b, byte(r.IntN(256)))
		}
	case 4: // QR=1
		if len(b) > 2 {
			b[2] |= 0x80
		}
	case 5: // another opcode
		if len(b) > 2 {
			b[2] = b[2]&^0x78 | byte(r.IntN(16))<<3
		}
	case 6: // QDCOUNT other than 1
		if len(b) >= 6 {
			binary.BigEndian.PutUint16(b[4:], []uint16{0, 2, 3, 0xffff}[r.IntN(4)])
		}
	case 7: // section counts that lie
		if len(b) >= 12 {
			binary.BigEndian.PutUint16(b[6+2*r.IntN(3):], uint16(r.IntN(4)))
		}
	case 8: // a bogus OPT record: bad version, a second OPT, or an RDLENGTH that lies
		if len(b) >= 12 {
			opt := []byte{0, 0, 41, 0x10, 0, 0, byte(r.IntN(256)), 0x80, 0, 0, byte(r.IntN(40))}
			for n := r.IntN(16); n > 0; n-- {
				opt = append(opt, byte(r.IntN(256)))
			}
			b = append(b, opt...)
			binary.BigEndian.PutUint16(b[10:], binary.BigEndian.Uint16(b[10:])+1)
		}
	case 9: // compression pointers: to itself, forward, into the header, chained
		if len(b) >= 14 {
			ptr := []uint16{12, uint16(len(b)), uint16(r.IntN(12)), 0x3fff, 14}[r.IntN(5)]
			b = append(b[:12], 0xc0|byte(ptr>>8), byte(ptr), 0xc0, 12, 0, 1, 0, 1)
		}
	case 10: // random bytes
		b = make([]byte, r.IntN(600))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
	case 11: // several of the above
		for n := 2 + r.IntN(2); n > 0; n-- {
			b = mutate(r, b)
		}
	}
	return b
}

// sent is one fuzz packet and what may come back for it.
type sent struct {
	wire     []byte
	answered int
}

// mayAnswer: a server answers only a message with a whole header and QR=0.
func (s *sent) mayAnswer() bool { return len(s.wire) >= 12 && s.wire[2]&0x80 == 0 }

// batch makes n packets with distinct IDs from start.
func batch(r *rand.Rand, n int, start uint16) map[uint16]*sent {
	out := make(map[uint16]*sent, n)
	for i := 0; i < n; i++ {
		id := start + uint16(i)
		b, err := baseQuery(r).Pack()
		if err != nil {
			panic(err)
		}
		b = mutate(r, b)
		if len(b) >= 2 {
			binary.BigEndian.PutUint16(b, id)
		}
		out[id] = &sent{wire: b}
	}
	return out
}

// checkAnswer verifies one answer against the packets of its batch.
func checkAnswer(pkts map[uint16]*sent, ans []byte) error {
	m := new(dns.Msg)
	if err := m.Unpack(ans); err != nil {
		return fmt.Errorf("answer does not parse: %v (%x)", err, ans)
	}
	s := pkts[m.Id]
	switch {
	case !m.Response:
		return fmt.Errorf("answer without QR: %v", m.MsgHdr)
	case s == nil:
		return fmt.Errorf("answer with ID %d, which no query of the batch had", m.Id)
	case !s.mayAnswer():
		return fmt.Errorf("answer to a message that must not be answered (%d bytes, QR=%v): query %x answer %v",
			len(s.wire), len(s.wire) > 2 && s.wire[2]&0x80 != 0, s.wire, m)
	}
	s.answered++
	if s.answered > 1 {
		return fmt.Errorf("ID %d answered %d times", m.Id, s.answered)
	}
	q := new(dns.Msg)
	if q.Unpack(s.wire) == nil && len(q.Question) == 1 && len(m.Question) == 1 && q.Question[0] != m.Question[0] {
		return fmt.Errorf("question %v answered with question %v", q.Question[0], m.Question[0])
	}
	return nil
}

// fuzzUDP sends pkts from one socket and checks every answer that comes
// back within the deadline.
func fuzzUDP(addr string, pkts map[uint16]*sent) []error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return []error{err}
	}
	defer c.Close()
	for _, p := range pkts {
		c.Write(p.wire)
	}
	var errs []error
	buf := make([]byte, 65535)
	for {
		// Until the server has been quiet for a while.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		if err := checkAnswer(pkts, buf[:n]); err != nil {
			errs = append(errs, fmt.Errorf("udp: %w", err))
		}
	}
	return errs
}

// fuzzTCP writes pkts length-prefixed on one connection, in one go
// (pipelined), in random chunks, or one byte at a time, and checks every
// answer until the server closes or the deadline passes.
func fuzzTCP(r *rand.Rand, addr string, pkts map[uint16]*sent) []error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return []error{err}
	}
	defer c.Close()
	var stream []byte
	for _, p := range pkts {
		stream = binary.BigEndian.AppendUint16(stream, uint16(len(p.wire)))
		stream = append(stream, p.wire...)
	}
	mode := r.IntN(3)
	go func() {
		switch mode {
		case 0:
			c.Write(stream)
		case 1:
			for len(stream) > 0 {
				n := min(len(stream), 1+r.IntN(40))
				if _, err := c.Write(stream[:n]); err != nil {
					return
				}
				stream = stream[n:]
			}
		case 2:
			for i := 0; i < len(stream) && i < 200; i++ { // slow: the first 200 bytes one by one
				if _, err := c.Write(stream[i : i+1]); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
			if len(stream) > 200 {
				c.Write(stream[200:])
			}
		}
	}()
	var errs []error
	var hdr [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			break
		}
		ans := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, ans); err != nil {
			errs = append(errs, fmt.Errorf("tcp: answer cut short: %v", err))
			break
		}
		if err := checkAnswer(pkts, ans); err != nil {
			errs = append(errs, fmt.Errorf("tcp: %w", err))
		}
	}
	return errs
}

// probe checks that a valid query gets the right answer over UDP and TCP.
func probe(addr string) error {
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion("www.diff.test.", dns.TypeA)
		m, _, err := c.Exchange(q, addr)
		if err != nil {
			return fmt.Errorf("probe over %s: %w", network, err)
		}
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.10" {
			return fmt.Errorf("probe over %s: wrong answer %v", network, m)
		}
	}
	return nil
}

// TestPacketFuzz throws random and damaged queries at a running localdns
// over UDP and TCP for GUARD_FUZZ_SECONDS (20 by default): every answer
// must parse, have QR=1 and the ID of a query that may be answered; after
// every batch a valid query is answered right on both listeners, and the
// process lives with a bounded RSS. GUARD_FUZZ_SEED replays a run.
func TestPacketFuzz(t *testing.T) {
	budget := time.Duration(envInt(t, "GUARD_FUZZ_SECONDS", 20)) * time.Second
	seed := uint64(envInt(t, "GUARD_FUZZ_SEED", int(time.Now().UnixNano()&0x7fffffff)))
	t.Logf("GUARD_FUZZ_SEED=%d, %s", seed, budget)
	r := rand.New(rand.NewPCG(seed, seed))

	a := startAuth(t)
	d := startLocaldns(t, "127.0.45.1", "127.0.45.2", a.addr, "", "")
	start := d.rss(t)
	maxRSS := start
	var batches, packets, answered, failures int
	id := uint16(r.IntN(65536))
	for deadline := time.Now().Add(budget); time.Now().Before(deadline); batches++ {
		listener := []string{d.node, d.pods}[batches%2]
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		run := func(f func() []error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e := f()
				mu.Lock()
				errs = append(errs, e...)
				mu.Unlock()
			}()
		}
		udp := batch(r, 400, id)
		id += 400
		run(func() []error { return fuzzUDP(listener, udp) })
		for i := 0; i < 4; i++ {
			tcp := batch(r, 25, id)
			id += 25
			tr := rand.New(rand.NewPCG(r.Uint64(), 0))
			run(func() []error { return fuzzTCP(tr, listener, tcp) })
		}
		wg.Wait()
		packets += 500
		for _, p := range udp {
			answered += p.answered
		}
		for _, err := range errs {
			if failures++; failures <= 20 {
				t.Errorf("batch %d: %v", batches, err)
			}
		}
		if !d.alive() {
			t.Fatalf("localdns died in batch %d; log:\n%s", batches, d.log.String())
		}
		for _, l := range []string{d.node, d.pods} {
			if err := probe(l); err != nil {
				t.Fatalf("after batch %d on %s: %v", batches, l, err)
			}
		}
		maxRSS = max(maxRSS, d.rss(t))
	}
	if strings.Contains(d.log.String(), "panic") {
		t.Errorf("localdns logged a panic:\n%s", d.log.String())
	}
	t.Logf("%d batches, %d packets, %d of the UDP ones answered; RSS %d MiB at start, at most %d MiB", batches, packets, answered, start>>20, maxRSS>>20)
	if maxRSS > start+64<<20 {
		t.Errorf("RSS grew from %d MiB to %d MiB", start>>20, maxRSS>>20)
	}
}
