package fastpath

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batched datagram I/O for the fast path: recvmmsg and sendmmsg issued as raw
// system calls on the non-blocking socket, inside the socket's RawConn (so
// the runtime's poller still parks the read loop when there is nothing to
// read).
//
// Why not x/net's ipv4.PacketConn.ReadBatch/WriteBatch, which this replaced:
// they enter every call through syscall.Syscall, and the runtime's
// entersyscall wakes the sysmon thread whenever it has gone to sleep because
// every P was idle. A DNS cache at 10k QPS is idle between most queries, so
// nearly every query paid a futex wake-up and a context switch to sysmon
// (a CPU profile showed entersyscallWakeSysmon and futex at 12%).
// recvmmsg and sendmmsg with MSG_DONTWAIT never block, so they need no
// entersyscall: raw calls cost the kernel's work only. They also keep the
// peer's address as the kernel wrote it, so an answer goes back to it without
// the net.UDPAddr x/net allocated per datagram. Measured with `make bench`
// (BENCH_RATE=10000, same run, same client): CPU per answered query 46 µs
// before, 32 µs after (stock CoreDNS: 75 µs), and the maximum cache-hit rate
// 80k QPS before, 104k after. Pinned to one CPU at 10k QPS, localdns used
// 49 µs per query before and 37 µs after, against unbound's 36 µs.

// mmsghdr is struct mmsghdr: a msghdr and the byte count the kernel
// returns for it (Go pads the struct as C does on every Linux ABI).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// batch is a set of datagram buffers with their headers, for one recvmmsg
// or sendmmsg.
type batch struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family's address
	bufs  [][]byte
	// filled is how many headers the last recvmmsg wrote to: only their
	// name lengths need resetting before the next one (the kernel leaves
	// the iovecs as they are).
	filled int
}

func newBatch(n, size int) *batch {
	b := &batch{
		hdrs:  make([]mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		bufs:  make([][]byte, n),
	}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
	}
	return b
}

// payload is datagram i as received (or as set for sending).
func (b *batch) payload(i int) []byte { return b.bufs[i][:b.hdrs[i].n] }

// recv reads up to len(b.hdrs) datagrams, waiting in the poller while there
// is none. It returns how many arrived.
func (b *batch) recv(rc syscall.RawConn) (int, error) {
	for i := range b.filled {
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
	}
	b.filled = 0
	var n int
	var errno syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // nothing queued: wait for the poller
			}
			n, errno = int(r), e
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", errno)
	}
	b.filled = n
	return n, nil
}

// setReply makes datagram i of b an answer of length n to the sender of
// datagram j of in.
func (b *batch) setReply(i, n int, in *batch, j int) {
	b.names[i] = in.names[j]
	b.hdrs[i].hdr.Namelen = in.hdrs[j].hdr.Namelen
	b.iovs[i].SetLen(n)
}

// send sends datagrams 0..n-1, waiting in the poller while the socket's
// send buffer is full. A datagram the kernel refuses outright (a
// destination it cannot route, say) is dropped like any lost datagram, and
// the rest are still sent: the client retries.
func (b *batch) send(rc syscall.RawConn, n int) {
	for sent := 0; sent < n; {
		var r int
		var errno syscall.Errno
		err := rc.Write(func(fd uintptr) bool {
			for {
				x, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[sent])), uintptr(n-sent), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					return false
				}
				r, errno = int(x), e
				return true
			}
		})
		switch {
		case err != nil: // the socket is closed
			return
		case errno != 0 || r <= 0: // the first datagram failed: skip it
			sent++
		default:
			sent += r
		}
	}
}

// addr is datagram i's peer as a net.UDPAddr, for a query handed to the
// CoreDNS server; nil for an address family UDP does not use.
func (b *batch) addr(i int) *net.UDPAddr {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), sa4.Addr[:]...)), Port: netPort(sa4.Port)}
	case unix.AF_INET6:
		a := &net.UDPAddr{IP: net.IP(append([]byte(nil), sa.Addr[:]...)), Port: netPort(sa.Port)}
		if sa.Scope_id != 0 {
			a.Zone = strconv.FormatUint(uint64(sa.Scope_id), 10)
		}
		return a
	}
	return nil
}

// client is datagram i's peer address (IPv4-mapped addresses unmapped),
// without allocating; the zero Addr for another family.
func (b *batch) client(i int) netip.Addr {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
}

// netPort reads a port the kernel stored in network byte order.
func netPort(p uint16) int {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return int(b[0])<<8 | int(b[1])
}
