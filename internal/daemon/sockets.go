package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"

	"github.com/localdns/localdns/internal/activation"
	"github.com/localdns/localdns/internal/fastpath"
	"github.com/localdns/localdns/plugin/frontend"
)

// socketPair is the UDP and TCP socket of one listener address. They are
// the master copies: each server generation serves duplicates, so replacing a
// generation never closes the socket the kernel queues queries on.
type socketPair struct {
	udp *net.UDPConn
	tcp *net.TCPListener
	// inherited: systemd passed at least one of them and holds its own
	// copy, so closing ours would not unbind the address.
	inherited bool
}

func (p *socketPair) close() {
	p.udp.Close()
	p.tcp.Close()
}

// SocketSource yields the sockets of a listener address: inherited from
// systemd (inherited is true when systemd passed at least one of the two),
// or bound by us.
type SocketSource func(addr string) (udp *net.UDPConn, tcp *net.TCPListener, inherited bool, err error)

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

// inheritedSource serves sockets systemd passed (matched by address and
// type) and binds the rest.
func inheritedSource(set activation.Set, log *slog.Logger) SocketSource {
	return func(addr string) (*net.UDPConn, *net.TCPListener, bool, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, nil, false, fmt.Errorf("listener address %q: %w", addr, err)
		}
		udp, tcp, ok := set.Take(ap)
		if !ok {
			udp, tcp, err := BindSockets(addr)
			return udp, tcp, false, err
		}
		log.Info("serving sockets passed by systemd", "addr", addr, "udp", udp != nil, "tcp", tcp != nil)
		if udp == nil {
			p2, err := net.ListenPacket("udp", addr)
			if err != nil {
				if tcp != nil {
					tcp.Close()
				}
				return nil, nil, true, fmt.Errorf("bind udp %s (not passed by systemd): %w", addr, err)
			}
			udp = p2.(*net.UDPConn)
		}
		if tcp == nil {
			l2, err := net.Listen("tcp", addr)
			if err != nil {
				udp.Close()
				return nil, nil, true, fmt.Errorf("bind tcp %s (not passed by systemd): %w", addr, err)
			}
			tcp = l2.(*net.TCPListener)
		}
		return udp, tcp, true, nil
	}
}

// socketOwner owns the listener sockets and serves the current generation of
// CoreDNS servers on them. It implements frontend.Owner.
type socketOwner struct {
	log    *slog.Logger
	source SocketSource

	mu      sync.Mutex
	sockets map[string]*socketPair
	current []served // the generation serving now
	wg      sync.WaitGroup
}

// served is one server of a generation and the duplicates it serves.
type served struct {
	srv *dnsserver.Server
	pc  net.PacketConn
	ln  *drainListener
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
	var (
		next  []served
		added []string // addresses first bound by this call
	)
	undo := func() {
		for _, s := range next {
			s.pc.Close()
			s.ln.Close()
		}
		for _, addr := range added {
			if p := o.sockets[addr]; !p.inherited {
				p.close()
				delete(o.sockets, addr)
			}
		}
	}
	for addr, list := range servers {
		pair, isNew, err := o.pair(addr)
		if err != nil {
			undo()
			return err
		}
		if isNew {
			added = append(added, addr)
		}
		table := fastpath.NewTable(addr, fs.Configs(addr))
		for _, srv := range list {
			pc, ln, err := pair.dup()
			if err != nil {
				undo()
				return fmt.Errorf("duplicate sockets of %s: %w", addr, err)
			}
			next = append(next, served{srv, fastpath.Wrap(pc, table, srv), newDrainListener(ln)})
		}
	}
	old := o.current
	o.current = next
	for _, s := range next {
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
	o.retire(old)
	o.closeUnused(servers)
	return nil
}

// retire stops a generation: its TCP listeners stop accepting and drain,
// its servers shut down (answering what they hold, up to their grace time),
// and its duplicates are closed. Closing them is what ends a server whose
// goroutine had not registered with dnsserver yet when Stop ran (a stop
// right after Serve): dnsserver.Server.Stop is a no-op for a server that
// has not started, and runs only once, so such a server would otherwise
// serve its duplicate forever and Close would wait for it forever.
func (o *socketOwner) retire(gen []served) {
	lns := make([]*drainListener, 0, len(gen))
	for _, s := range gen {
		lns = append(lns, s.ln)
	}
	drainAll(lns)
	for _, s := range gen {
		if err := s.srv.Stop(); err != nil {
			o.log.Warn("stop server", "addr", s.srv.Address(), "err", err)
		}
	}
	for _, s := range gen {
		s.pc.Close()
		s.ln.Close()
	}
}

// closeUnused closes the sockets of addresses the generation now serving
// does not listen on (a reload moved or removed a listener): a socket kept
// open but no longer read would swallow the queries sent to it, where a
// closed one refuses them (ICMP port unreachable, TCP RST) and the client
// moves on at once.
//
// A socket systemd passed is the exception: systemd holds its own copy, so
// closing ours would not unbind it, and the kernel keeps queueing queries on
// it until localdns.socket is changed to match the profile. It stays open
// (unserved), so a later reload back to that address serves it again, and a
// warning says so.
func (o *socketOwner) closeUnused(servers map[string][]*dnsserver.Server) {
	for addr, p := range o.sockets {
		if _, used := servers[addr]; used {
			continue
		}
		if p.inherited {
			o.log.Warn("no listener serves this socket passed by systemd any more; systemd keeps it bound and queries to it go unanswered until localdns.socket matches the profile",
				"addr", addr)
			continue
		}
		p.close()
		delete(o.sockets, addr)
		o.log.Info("closed the sockets of a listener address no longer served", "addr", addr)
	}
}

// pair returns the master sockets of addr, binding (or taking from systemd)
// them the first time; isNew says they were opened now.
func (o *socketOwner) pair(addr string) (p *socketPair, isNew bool, err error) {
	if p, ok := o.sockets[addr]; ok {
		return p, false, nil
	}
	udp, tcp, inherited, err := o.source(addr)
	if err != nil {
		return nil, false, err
	}
	p = &socketPair{udp: udp, tcp: tcp, inherited: inherited}
	o.sockets[addr] = p
	return p, true, nil
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
	current := o.current
	o.current = nil
	o.mu.Unlock()
	o.retire(current)
	o.wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, p := range o.sockets {
		p.close()
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
