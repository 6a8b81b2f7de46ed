package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"

	"github.com/localdns/localdns/internal/fastpath"
	"github.com/localdns/localdns/plugin/frontend"
)

// socketPair is the UDP and TCP socket of one listener address. They are
// the master copies: each server generation serves duplicates, so replacing a
// generation never closes the socket the kernel queues queries on.
type socketPair struct {
	udp *net.UDPConn
	tcp *net.TCPListener
}

// SocketSource yields the sockets of a listener address: inherited from
// systemd, or bound by us.
type SocketSource func(addr string) (*net.UDPConn, *net.TCPListener, error)

// BindSockets binds a fresh UDP and TCP socket on addr.
func BindSockets(addr string) (*net.UDPConn, *net.TCPListener, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("bind udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("bind tcp %s: %w", addr, err)
	}
	return pc.(*net.UDPConn), ln.(*net.TCPListener), nil
}

// socketOwner owns the listener sockets and serves the current generation of
// CoreDNS servers on them. It implements frontend.Owner.
type socketOwner struct {
	log    *slog.Logger
	source SocketSource

	mu      sync.Mutex
	sockets map[string]*socketPair
	current []*dnsserver.Server
	lns     []*drainListener // TCP listeners of the current generation
	wg      sync.WaitGroup
}

func newSocketOwner(log *slog.Logger, source SocketSource) *socketOwner {
	return &socketOwner{log: log, source: source, sockets: map[string]*socketPair{}}
}

// Serve starts servers on duplicates of the owned sockets (opening sockets
// for addresses it has not seen), then stops the previous generation. Both
// generations read the same kernel socket for a moment, so no query is lost.
func (o *socketOwner) Serve(fs *frontend.Servers) error {
	servers, err := fs.ByAddress()
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	type started struct {
		srv *dnsserver.Server
		pc  net.PacketConn
		ln  net.Listener
	}
	var next []started
	undo := func() {
		for _, s := range next {
			s.pc.Close()
			s.ln.Close()
		}
	}
	for addr, list := range servers {
		pair, err := o.pair(addr)
		if err != nil {
			undo()
			return err
		}
		table := fastpath.NewTable(addr, fs.Configs(addr))
		for _, srv := range list {
			pc, ln, err := pair.dup()
			if err != nil {
				undo()
				return fmt.Errorf("duplicate sockets of %s: %w", addr, err)
			}
			next = append(next, started{srv, fastpath.Wrap(pc, table), newDrainListener(ln)})
		}
	}
	old, oldLns := o.current, o.lns
	o.current, o.lns = nil, nil
	for _, s := range next {
		o.current = append(o.current, s.srv)
		o.lns = append(o.lns, s.ln.(*drainListener))
		o.wg.Add(2)
		go func(srv *dnsserver.Server, pc net.PacketConn) {
			defer o.wg.Done()
			if err := srv.ServePacket(pc); err != nil && !isClosed(err) {
				o.log.Error("udp server stopped", "addr", srv.Address(), "err", err)
			}
		}(s.srv, s.pc)
		go func(srv *dnsserver.Server, ln net.Listener) {
			defer o.wg.Done()
			if err := srv.Serve(ln); err != nil && !isClosed(err) {
				o.log.Error("tcp server stopped", "addr", srv.Address(), "err", err)
			}
		}(s.srv, s.ln)
	}
	drainAll(oldLns)
	for _, srv := range old {
		if err := srv.Stop(); err != nil {
			o.log.Warn("stop previous server", "addr", srv.Address(), "err", err)
		}
	}
	return nil
}

func (o *socketOwner) pair(addr string) (*socketPair, error) {
	if p, ok := o.sockets[addr]; ok {
		return p, nil
	}
	udp, tcp, err := o.source(addr)
	if err != nil {
		return nil, err
	}
	p := &socketPair{udp: udp, tcp: tcp}
	o.sockets[addr] = p
	return p, nil
}

// dup returns new file descriptors for the same kernel sockets.
func (p *socketPair) dup() (*net.UDPConn, net.Listener, error) {
	uf, err := p.udp.File()
	if err != nil {
		return nil, nil, err
	}
	defer uf.Close()
	fpc, err := net.FilePacketConn(uf)
	if err != nil {
		return nil, nil, err
	}
	pc := fpc.(*net.UDPConn)
	tf, err := p.tcp.File()
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	defer tf.Close()
	ln, err := net.FileListener(tf)
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	return pc, ln, nil
}

// Addresses returns the addresses of the owned sockets.
func (o *socketOwner) Addresses() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.sockets))
	for a := range o.sockets {
		out = append(out, a)
	}
	return out
}

// Close stops the current servers (draining in-flight queries up to their
// grace time) and closes the master sockets.
func (o *socketOwner) Close() {
	o.mu.Lock()
	current, lns := o.current, o.lns
	o.current, o.lns = nil, nil
	o.mu.Unlock()
	drainAll(lns)
	for _, srv := range current {
		if err := srv.Stop(); err != nil {
			o.log.Warn("stop server", "addr", srv.Address(), "err", err)
		}
	}
	o.wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, p := range o.sockets {
		p.udp.Close()
		p.tcp.Close()
		delete(o.sockets, addr)
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// drainTimeout bounds how long a stopping generation waits for the first
// query of connections it accepted.
const drainTimeout = time.Second

// drainListener is a generation's duplicate of a TCP listener that knows
// which accepted connections have not been answered yet. miekg/dns's
// shutdown closes every connection at once, including one accepted a moment
// ago whose query is still unread; draining first stops accepting (the
// master socket keeps queueing new connections for the next generation or
// process) and lets those connections get their answer.
type drainListener struct {
	net.Listener
	mu      sync.Mutex
	pending map[*answeredConn]struct{}
}

func newDrainListener(ln net.Listener) *drainListener {
	return &drainListener{Listener: ln, pending: map[*answeredConn]struct{}{}}
}

func (l *drainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ac := &answeredConn{Conn: c, l: l}
	l.mu.Lock()
	l.pending[ac] = struct{}{}
	l.mu.Unlock()
	return ac, nil
}

// drain stops accepting and waits, at most until deadline, until every
// accepted connection got an answer or was closed.
func (l *drainListener) drain(deadline time.Time) {
	l.Listener.Close()
	for time.Now().Before(deadline) {
		l.mu.Lock()
		n := len(l.pending)
		l.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func drainAll(lns []*drainListener) {
	deadline := time.Now().Add(drainTimeout)
	for _, l := range lns {
		l.drain(deadline)
	}
}

// answeredConn leaves its listener's pending set on its first write (the
// answer) or when closed.
type answeredConn struct {
	net.Conn
	l    *drainListener
	once sync.Once
}

func (c *answeredConn) done() {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.pending, c)
		c.l.mu.Unlock()
	})
}

func (c *answeredConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.done()
	return n, err
}

func (c *answeredConn) Close() error {
	c.done()
	return c.Conn.Close()
}
