package nodecache

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/localdns/localdns/internal/atomicfile"
)

// Snapshot file format, version 1, all integers big-endian:
//
//	header  magic "LDNSCACH" | version u16 | reserved u16 | count u32 | saved unix ns i64
//	entry   namespace u32 | flags u8 | stored unix ns i64 | ttl u32 | stale u32 | len u16 | wire
//	trailer CRC-32C (Castagnoli) of everything before it, u32
//
// Times in the file are wall-clock, so ages survive a restart: a restored
// entry has the TTL it would have had, and one past TTL + stale window is
// dropped. In memory the store counts on the monotonic clock (see
// Store.now); the conversion happens at save and at restore only.
//
// Entries are written most valuable first: the main queue's (asked for
// again since they were cached) before the small queue's, more often hit
// first, newest first. A restore into a smaller budget keeps the head of
// the file.
const (
	snapshotMagic   = "LDNSCACH"
	snapshotVersion = 1
	headerLen       = 24
	entryHeaderLen  = 23
	trailerLen      = 4
	maxSnapshotSize = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errForeign    = errors.New("not a nodecache snapshot")
	errVersion    = errors.New("unsupported snapshot version")
	errChecksum   = errors.New("snapshot checksum mismatch")
	errCorrupt    = errors.New("corrupt snapshot")
	errNotRegular = errors.New("not a regular file")
	errTooLarge   = errors.New("snapshot too large")
)

// encodeSnapshot writes entries to w; their times are already wall-clock.
func encodeSnapshot(w io.Writer, entries []*entry, now time.Time) error {
	return encodeSnapshotAt(w, entries, now, 0)
}

// encodeSnapshotAt writes entries to w, converting their in-memory times to
// wall-clock by subtracting offset (Store.wallOffset); now is the wall time
// of the save.
func encodeSnapshotAt(w io.Writer, entries []*entry, now time.Time, offset int64) error {
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 64<<10)
	var hdr [headerLen]byte
	copy(hdr[:], snapshotMagic)
	binary.BigEndian.PutUint16(hdr[8:], snapshotVersion)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(entries)))
	binary.BigEndian.PutUint64(hdr[16:], uint64(now.UnixNano()))
	bw.Write(hdr[:])
	var eh [entryHeaderLen]byte
	for _, e := range entries {
		binary.BigEndian.PutUint32(eh[0:], uint32(e.ns))
		eh[4] = e.flags
		binary.BigEndian.PutUint64(eh[5:], uint64(e.stored-offset))
		binary.BigEndian.PutUint32(eh[13:], e.ttl)
		binary.BigEndian.PutUint32(eh[17:], e.snapshotStale())
		binary.BigEndian.PutUint16(eh[21:], uint16(len(e.wire)))
		bw.Write(eh[:])
		bw.Write(e.wire)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	_, err := w.Write(sum[:])
	return err
}

// entryHeader is an entry's fixed part as the file has it.
type entryHeader struct {
	ns           Namespace
	flags        uint8
	stored       int64 // wall-clock unix ns
	ttl, stale   uint32
	wireLen      int
	index, count int
}

// readSnapshot reads a snapshot of size bytes from r entry by entry and
// calls visit with each entry's header and wire bytes. wire aliases the
// read buffer: it is valid only during the call, and visit copies what it
// keeps, so reading costs a fixed buffer whatever the file's size. The
// header is checked before anything else is read. Entries are checked as
// they come, the checksum at the end: the caller must not use what it kept
// until readSnapshot returned nil.
func readSnapshot(r io.Reader, size int64, visit func(h entryHeader, wire []byte) error) error {
	if size < headerLen+trailerLen {
		var magic [8]byte
		n, _ := io.ReadFull(r, magic[:])
		if string(magic[:n]) == snapshotMagic[:n] && n > 0 {
			return fmt.Errorf("%w: %d bytes, shorter than a header", errCorrupt, size)
		}
		return errForeign
	}
	br := bufio.NewReaderSize(io.LimitReader(r, size), 0xFFFF+entryHeaderLen+1)
	crc := crc32.New(castagnoli)
	var hdr [headerLen]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return fmt.Errorf("%w: header: %v", errCorrupt, err)
	}
	if string(hdr[:8]) != snapshotMagic {
		return errForeign
	}
	if v := binary.BigEndian.Uint16(hdr[8:]); v != snapshotVersion {
		return fmt.Errorf("%w %d", errVersion, v)
	}
	crc.Write(hdr[:])
	body := size - headerLen - trailerLen // bytes of entries
	count := int(binary.BigEndian.Uint32(hdr[12:]))
	if int64(count) > body/entryHeaderLen {
		return fmt.Errorf("%w: %d entries cannot fit %d bytes", errCorrupt, count, size)
	}
	var eh [entryHeaderLen]byte
	for i := range count {
		if _, err := io.ReadFull(br, eh[:]); err != nil {
			return fmt.Errorf("%w: entry %d truncated", errCorrupt, i)
		}
		crc.Write(eh[:])
		h := entryHeader{
			ns:      Namespace(binary.BigEndian.Uint32(eh[0:])),
			flags:   eh[4],
			stored:  int64(binary.BigEndian.Uint64(eh[5:])),
			ttl:     binary.BigEndian.Uint32(eh[13:]),
			stale:   binary.BigEndian.Uint32(eh[17:]),
			wireLen: int(binary.BigEndian.Uint16(eh[21:])),
			index:   i,
			count:   count,
		}
		if h.flags&^(flagDO|flagCD) != 0 || h.ttl > maxTTLLimit || h.stale > maxTTLLimit {
			return fmt.Errorf("%w: entry %d has invalid fields", errCorrupt, i)
		}
		body -= entryHeaderLen + int64(h.wireLen)
		if body < 0 {
			return fmt.Errorf("%w: entry %d truncated", errCorrupt, i)
		}
		wire, err := br.Peek(h.wireLen)
		if err != nil {
			return fmt.Errorf("%w: entry %d truncated", errCorrupt, i)
		}
		crc.Write(wire)
		if err := visit(h, wire); err != nil {
			return err
		}
		br.Discard(h.wireLen)
	}
	if body != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorrupt, body)
	}
	var sum [trailerLen]byte
	if _, err := io.ReadFull(br, sum[:]); err != nil {
		return fmt.Errorf("%w: trailer: %v", errCorrupt, err)
	}
	if crc.Sum32() != binary.BigEndian.Uint32(sum[:]) {
		return errChecksum
	}
	return nil
}

// decodeSnapshot parses a whole snapshot held in memory and returns the
// entries still servable at now (fresh or within their stale window), with
// their file times. Every stored message is validated as it would be after
// an upstream answer.
func decodeSnapshot(b []byte, now time.Time) (entries []*entry, dropped int, err error) {
	nowN := now.UnixNano()
	err = readSnapshot(bytes.NewReader(b), int64(len(b)), func(h entryHeader, wire []byte) error {
		e, err := h.entry(wire, 0)
		if err != nil {
			return err
		}
		if fresh, inStale := e.servable(nowN); !fresh && !inStale {
			dropped++
			return nil
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return entries, dropped, nil
}

// entry copies wire and builds the entry, its time moved by offset.
func (h entryHeader) entry(wire []byte, offset int64) (*entry, error) {
	own := make([]byte, len(wire))
	copy(own, wire)
	e, why := entryFromWire(own, h.ns, h.flags, h.stored+offset, h.ttl, h.stale)
	if e == nil {
		return nil, fmt.Errorf("%w: entry %d: %s", errCorrupt, h.index, why)
	}
	return e, nil
}

// size is what the entry will cost in the store, known before it is built:
// its wire, two bytes per record for the TTL offsets and the fixed
// overhead, as entryFromWire computes it. ok is false when the wire is too
// short to say (entryFromWire then rejects it).
func (h entryHeader) size(wire []byte) (size int64, ok bool) {
	if len(wire) < 12 {
		return 0, false
	}
	records := int(binary.BigEndian.Uint16(wire[6:])) + int(binary.BigEndian.Uint16(wire[8:])) + int(binary.BigEndian.Uint16(wire[10:]))
	return int64(len(wire) + 2*records + entryOverhead), true
}

// question returns the question of a stored message without copying, or ok
// false when it has none that indexWire would accept.
func question(wire []byte) (name []byte, qtype, qclass uint16, ok bool) {
	if len(wire) < 12 || binary.BigEndian.Uint16(wire[4:]) != 1 {
		return nil, 0, 0, false
	}
	off := 12
	for {
		if off >= len(wire) {
			return nil, 0, 0, false
		}
		l := int(wire[off])
		if l&0xC0 != 0 || off+l+1-12 > maxNameWire {
			return nil, 0, 0, false
		}
		off += l + 1
		if l == 0 {
			break
		}
	}
	if off+4 > len(wire) {
		return nil, 0, 0, false
	}
	return wire[12:off], binary.BigEndian.Uint16(wire[off:]), binary.BigEndian.Uint16(wire[off+2:]), true
}

// SaveSnapshot writes every live entry to path atomically (a temporary file
// in the same directory, fsync, rename, fsync of the directory), most
// valuable first. It returns the number of entries written.
func (s *Store) SaveSnapshot(path string) (int, error) {
	entries := s.ranked()
	now := s.now().UnixNano()
	live := entries[:0]
	for _, e := range entries {
		if fresh, stale := e.servable(now); fresh || stale {
			live = append(live, e)
		}
	}
	entries = live
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("snapshot directory: %w", err)
	}
	wall, offset := s.wallNow(), s.wallOffset()
	if err := atomicfile.Write(path, 0o600, func(w io.Writer) error { return encodeSnapshotAt(w, entries, wall, offset) }); err != nil {
		return 0, fmt.Errorf("save snapshot: %w", err)
	}
	snapshotSaved.Set(float64(len(entries)))
	snapshotTimestamp.Set(float64(wall.Unix()))
	return len(entries), nil
}

// ranked returns every entry, most valuable first: the main queue's before
// the small queue's, then by access frequency, then newest first. The
// entries are immutable, so the caller may read them after the locks are
// released.
func (s *Store) ranked() []*entry {
	type rankedEntry struct {
		e    *entry
		main bool
		freq uint32
	}
	all := make([]rankedEntry, 0, s.Len())
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for e := sh.main.head; e != nil; e = e.next {
			all = append(all, rankedEntry{e, true, e.freq.Load()})
		}
		for e := sh.small.head; e != nil; e = e.next {
			all = append(all, rankedEntry{e, false, e.freq.Load()})
		}
		sh.mu.RUnlock()
	}
	slices.SortFunc(all, func(a, b rankedEntry) int {
		if a.main != b.main {
			if a.main {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.freq, a.freq); c != 0 {
			return c
		}
		return cmp.Compare(b.e.stored, a.e.stored)
	})
	out := make([]*entry, len(all))
	for i, r := range all {
		out[i] = r.e
	}
	return out
}

// restoreStats says what a restore did with the snapshot's entries.
type restoreStats struct {
	read       int // entries in the file
	kept       int // entries now in the store
	expired    int // past their TTL and stale window
	overBudget int // no room left in their shard
}

// openSnapshot opens path for reading if it is a regular file. It never
// blocks (a FIFO opens non-blocking and is refused), never follows a
// symbolic link at path (a link to /dev/zero would be an endless read), and
// refuses a file larger than maxSnapshotSize before reading any of it.
func openSnapshot(path string) (*os.File, int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, 0, os.ErrNotExist
	case errors.Is(err, unix.ELOOP):
		return nil, 0, fmt.Errorf("%w: it is a symbolic link", errNotRegular)
	case err != nil:
		return nil, 0, fmt.Errorf("open: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%w: it is a %s", errNotRegular, fileKind(st.Mode))
	}
	if st.Size > maxSnapshotSize {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%w: %d bytes, more than %d", errTooLarge, st.Size, maxSnapshotSize)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("set blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), path), st.Size, nil
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "named pipe"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "special file"
}

// LoadSnapshot restores entries from path into the store. A missing file
// restores nothing and is no error.
//
// The restore costs at most what the budget lets it keep, plus a fixed read
// buffer, whatever the file holds: the header is checked before anything
// else is read, entries are read one by one, and an entry is copied only if
// it is servable and its shard has room for it without evicting anything
// (the file lists the most valuable entries first, so those are the ones
// kept). Kept entries enter the store only once the whole file checked out;
// on any error the store is unchanged.
func (s *Store) LoadSnapshot(path string) (restoreStats, error) {
	var st restoreStats
	f, size, err := openSnapshot(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("snapshot %s: %w", path, err)
	}
	defer f.Close()

	offset := s.wallOffset()
	nowN := s.now().UnixNano()
	var room, largest [numShards]int64 // what put admits without evicting
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		room[i], largest[i] = sh.budget-sh.small.bytes-sh.main.bytes, sh.budget/8
		sh.mu.RUnlock()
	}
	var staged []*entry
	err = readSnapshot(f, size, func(h entryHeader, wire []byte) error {
		st.read++
		if fresh, stale := servableAt(h.stored+offset, h.ttl, h.stale, nowN); !fresh && !stale {
			st.expired++
			return nil
		}
		name, qtype, qclass, ok := question(wire)
		cost, ok2 := h.size(wire)
		if !ok || !ok2 {
			return fmt.Errorf("%w: entry %d: %v", errCorrupt, h.index, errBadWire)
		}
		i := s.keys.keyOf(h.ns, h.flags, qtype, qclass, name) & (numShards - 1)
		if cost > largest[i] || cost > room[i] {
			st.overBudget++
			return nil
		}
		e, err := h.entry(wire, offset)
		if err != nil {
			return err
		}
		room[i] -= e.size
		staged = append(staged, e)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("snapshot %s: %w", path, err)
	}
	before := s.Len()
	for _, e := range staged {
		s.put(e)
	}
	st.kept = s.Len() - before
	snapshotRestored.Set(float64(st.kept))
	return st, nil
}

// snapshotter runs the periodic save of the process-wide store.
type snapshotter struct {
	mu       sync.Mutex
	path     string
	every    time.Duration
	stop     chan struct{}
	done     chan struct{}
	restored bool

	lock snapshotLock
}

// startSnapshots restores the snapshot the first time it is called for this
// store, then (re)starts the periodic save with path and every. An empty
// path stops periodic saving.
func (s *Store) startSnapshots(path string, every time.Duration) {
	sn := &s.snap
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if path != "" {
		sn.lock.hold(path) // says so if another process holds it
	}
	if !sn.restored && path != "" {
		sn.restored = true
		start := time.Now()
		st, err := s.LoadSnapshot(path)
		switch {
		case err != nil:
			log.Warningf("Ignoring the cache snapshot, starting with an empty cache: %v", err)
		case st.read > 0:
			log.Infof("Restored %d cache entries from %s in %s (%d in the file: %d expired, %d over the memory budget of %d bytes)",
				st.kept, path, time.Since(start).Round(time.Millisecond), st.read, st.expired, st.overBudget, s.Budget())
		}
	}
	if sn.path == path && sn.every == every && sn.stop != nil {
		return
	}
	sn.stopLocked()
	sn.path, sn.every = path, every
	if path == "" {
		return
	}
	sn.stop, sn.done = make(chan struct{}), make(chan struct{})
	go s.saveLoop(path, every, sn.stop, sn.done)
}

func (s *Store) saveLoop(path string, every time.Duration, stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if !s.snap.lock.hold(path) {
				continue
			}
			if _, err := s.SaveSnapshot(path); err != nil {
				log.Errorf("Periodic cache snapshot: %v", err)
			}
		}
	}
}

// finalSnapshot stops the periodic save, writes the snapshot once more if
// this process holds its lock, and releases the lock.
func (s *Store) finalSnapshot() error {
	sn := &s.snap
	sn.mu.Lock()
	defer sn.mu.Unlock()
	path := sn.path
	sn.stopLocked()
	sn.path = ""
	if path == "" {
		return nil
	}
	defer sn.lock.release()
	if !sn.lock.hold(path) {
		return nil
	}
	n, err := s.SaveSnapshot(path)
	if err != nil {
		return fmt.Errorf("nodecache: %w", err)
	}
	log.Infof("Saved %d cache entries to %s", n, path)
	return nil
}

func (sn *snapshotter) stopLocked() {
	if sn.stop != nil {
		close(sn.stop)
		<-sn.done
		sn.stop, sn.done = nil, nil
	}
}

// snapshotLock is an exclusive flock on "<snapshot>.lock", held by the one
// process that writes the snapshot. A second localdns on the same path (one
// started by hand while the service runs, or one that failed to bind and is
// stopping) reads the snapshot but never overwrites the running instance's.
// The lock file holds the holder's pid, for the log of the others. The
// kernel drops the lock when the holder exits, however it exits.
type snapshotLock struct {
	mu     sync.Mutex
	f      *os.File
	path   string // lock file held or last tried
	warned bool
}

// hold makes sure this process holds the lock of the snapshot at path,
// taking it if it is free; it logs once when another process holds it, and
// when this one takes over later.
func (l *snapshotLock) hold(path string) bool {
	lp := path + ".lock"
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil && l.path == lp {
		return true
	}
	l.releaseLocked()
	if l.path != lp {
		l.path, l.warned = lp, false
	}
	f, err := lockFile(lp)
	if err != nil {
		if !l.warned {
			log.Warningf("Not writing the cache snapshot %s: %v", path, err)
			l.warned = true
		}
		return false
	}
	if l.warned {
		log.Infof("Took the cache snapshot lock %s: this process writes the snapshot from now on", lp)
		l.warned = false
	}
	l.f = f
	return true
}

func (l *snapshotLock) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releaseLocked()
}

func (l *snapshotLock) releaseLocked() {
	if l.f != nil {
		l.f.Close() // drops the flock
		l.f = nil
	}
}

// lockFile takes an exclusive, non-blocking flock on path (created if
// missing) and writes our pid into it.
func lockFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("snapshot directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := io.ReadAll(io.LimitReader(f, 32)); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = "process " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s holds its lock %s (another localdns on the same snapshot)", holder, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = unix.Flock(int(fd), how) }); err != nil {
		return err
	}
	return ferr
}
