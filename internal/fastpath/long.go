package fastpath

import (
	"context"
	"encoding/binary"
	"net"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
)

// Queries longer than CoreDNS's UDP read buffer.
//
// miekg/dns's server reads each datagram into a buffer of its UDPSize, 512
// bytes unless set, and dnsserver.Server.ServePacket gives no way to set it.
// A query may be longer without EDNS0 (RFC 1035's 512-byte limit is on
// answers; a query with a large additional section, an UPDATE): the server
// would get it cut at 512 bytes and answer FORMERR, as stock CoreDNS does.
// Conn reads every datagram whole, so it hands such a query to the server's
// plugin chain itself, doing what miekg's server does with a datagram
// (serveDNS in its server.go): check the header with the accept function,
// unpack, verify a TSIG, call the handler dnsserver gives miekg, with a
// writer that answers over the same socket. Only the rare long queries take
// this path; the rest, and every cache hit, are untouched by it.
//
// What it does not share with dnsserver's server: the accept function is
// miekg's default, which is dnsserver's own unless a plugin allows another
// opcode (Config.AllowOpcode; none in localdns's build: such an opcode in a
// long query is answered NOTIMP), and a UDP writer decorator
// (Config.UDPDecorateWriterFunc; none in localdns's build) is not applied.

// longGrace bounds how long Close waits for long queries in flight: the
// grace time dnsserver gives its own in-flight queries at shutdown.
const longGrace = 5 * time.Second

// serveLong answers query, which is longer than the CoreDNS server's read
// buffer, through the server's plugin chain, in its own goroutine as the
// server does. query is copied: the batch buffer is reused.
func (c *Conn) serveLong(query []byte, from *net.UDPAddr) {
	c.longMu.Lock()
	defer c.longMu.Unlock()
	if c.longClosed {
		return
	}
	c.long.Add(1)
	q := append([]byte(nil), query...)
	go func() {
		defer c.long.Done()
		c.serveMsg(q, &longWriter{c: c, remote: from})
	}()
}

// serveMsg is miekg's Server.serveDNS for one datagram, with dnsserver's
// handler (ServePacket's) at the end.
func (c *Conn) serveMsg(q []byte, w *longWriter) {
	if len(q) < 12 {
		return // miekg's server leaves such a sender without an answer too
	}
	h := dns.Header{
		Id:      binary.BigEndian.Uint16(q[0:]),
		Bits:    binary.BigEndian.Uint16(q[2:]),
		Qdcount: binary.BigEndian.Uint16(q[4:]),
		Ancount: binary.BigEndian.Uint16(q[6:]),
		Nscount: binary.BigEndian.Uint16(q[8:]),
		Arcount: binary.BigEndian.Uint16(q[10:]),
	}
	req := headerMsg(h)
	switch action := dns.DefaultMsgAcceptFunc(h); action {
	case dns.MsgAccept:
		if err := req.Unpack(q); err == nil {
			break
		}
		fallthrough
	case dns.MsgReject, dns.MsgRejectNotImplemented:
		opcode := req.Opcode
		req.SetRcodeFormatError(req)
		req.Zero = false
		if action == dns.MsgRejectNotImplemented {
			req.Opcode = opcode
			req.Rcode = dns.RcodeNotImplemented
		}
		req.Ns, req.Answer, req.Extra = nil, nil, nil
		w.WriteMsg(req)
		return
	default: // MsgIgnore
		return
	}
	if t := req.IsTsig(); t != nil {
		w.tsigMAC = t.MAC
		if secret, ok := c.srv.TsigSecret[t.Hdr.Name]; ok {
			w.tsigStatus = dns.TsigVerify(q, secret, "", false)
		} else {
			w.tsigStatus = dns.ErrSecret
		}
	}
	ctx := context.WithValue(context.Background(), dnsserver.Key{}, c.srv)
	ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
	c.srv.ServeDNS(ctx, w, req)
}

// headerMsg is a message with the header h (miekg's Msg.setHdr).
func headerMsg(h dns.Header) *dns.Msg {
	m := new(dns.Msg)
	m.Id = h.Id
	m.Response = h.Bits&(1<<15) != 0
	m.Opcode = int(h.Bits>>11) & 0xF
	m.Authoritative = h.Bits&(1<<10) != 0
	m.Truncated = h.Bits&(1<<9) != 0
	m.RecursionDesired = h.Bits&(1<<8) != 0
	m.RecursionAvailable = h.Bits&(1<<7) != 0
	m.Zero = h.Bits&(1<<6) != 0
	m.AuthenticatedData = h.Bits&(1<<5) != 0
	m.CheckingDisabled = h.Bits&(1<<4) != 0
	m.Rcode = int(h.Bits & 0xF)
	return m
}

// Close stops handing long queries to the chain, waits (up to longGrace)
// for those in flight to be answered, and closes the socket.
func (c *Conn) Close() error {
	c.longMu.Lock()
	c.longClosed = true
	c.longMu.Unlock()
	done := make(chan struct{})
	go func() {
		c.long.Wait()
		close(done)
	}()
	t := time.NewTimer(longGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	return c.UDPConn.Close()
}

// longWriter answers one long query over the Conn's socket, as miekg's
// UDP response writer does.
type longWriter struct {
	c          *Conn
	remote     *net.UDPAddr
	tsigStatus error
	tsigMAC    string
	timersOnly bool
}

func (w *longWriter) LocalAddr() net.Addr  { return w.c.LocalAddr() }
func (w *longWriter) RemoteAddr() net.Addr { return w.remote }

// WriteMsg packs m, signing it when it carries a TSIG record, as miekg's
// writer does.
func (w *longWriter) WriteMsg(m *dns.Msg) error {
	var (
		b   []byte
		err error
	)
	if t := m.IsTsig(); t != nil {
		secret, ok := w.c.srv.TsigSecret[t.Hdr.Name]
		if !ok {
			return dns.ErrSecret
		}
		b, w.tsigMAC, err = dns.TsigGenerate(m, secret, w.tsigMAC, w.timersOnly)
	} else {
		b, err = m.Pack()
	}
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *longWriter) Write(b []byte) (int, error) { return w.c.UDPConn.WriteTo(b, w.remote) }
func (w *longWriter) Close() error                { return nil }
func (w *longWriter) TsigStatus() error           { return w.tsigStatus }
func (w *longWriter) TsigTimersOnly(b bool)       { w.timersOnly = b }
func (w *longWriter) Hijack()                     {}
