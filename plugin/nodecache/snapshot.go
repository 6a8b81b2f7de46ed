package nodecache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/localdns/localdns/internal/atomicfile"
)

// Snapshot file format, version 1, all integers big-endian:
//
//	header  magic "LDNSCACH" | version u16 | reserved u16 | count u32 | saved unix ns i64
//	entry   namespace u32 | flags u8 | stored unix ns i64 | ttl u32 | stale u32 | len u16 | wire
//	trailer CRC-32C (Castagnoli) of everything before it, u32
//
// Times are wall-clock, so ages survive a restart: a restored entry has the
// TTL it would have had, and one past TTL + stale window is dropped.
const (
	snapshotMagic   = "LDNSCACH"
	snapshotVersion = 1
	headerLen       = 24
	entryHeaderLen  = 23
	maxSnapshotSize = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errForeign  = errors.New("not a nodecache snapshot")
	errVersion  = errors.New("unsupported snapshot version")
	errChecksum = errors.New("snapshot checksum mismatch")
	errCorrupt  = errors.New("corrupt snapshot")
)

// encodeSnapshot writes entries to w.
func encodeSnapshot(w io.Writer, entries []*entry, now time.Time) error {
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
		binary.BigEndian.PutUint64(eh[5:], uint64(e.stored))
		binary.BigEndian.PutUint32(eh[13:], e.ttl)
		binary.BigEndian.PutUint32(eh[17:], e.stale)
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

// decodeSnapshot parses a snapshot and returns the entries still servable
// at now (fresh or within their stale window). Every stored message is
// validated as it would be after an upstream answer.
func decodeSnapshot(b []byte, now time.Time) (entries []*entry, dropped int, err error) {
	if len(b) < headerLen+4 || string(b[:8]) != snapshotMagic {
		return nil, 0, errForeign
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != snapshotVersion {
		return nil, 0, fmt.Errorf("%w %d", errVersion, v)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return nil, 0, errChecksum
	}
	count := int(binary.BigEndian.Uint32(b[12:]))
	if count > len(body)/entryHeaderLen {
		return nil, 0, fmt.Errorf("%w: %d entries cannot fit %d bytes", errCorrupt, count, len(body))
	}
	nowN := now.UnixNano()
	off := headerLen
	for i := range count {
		if off+entryHeaderLen > len(body) {
			return nil, 0, fmt.Errorf("%w: entry %d truncated", errCorrupt, i)
		}
		eh := body[off : off+entryHeaderLen]
		ns := Namespace(binary.BigEndian.Uint32(eh))
		flags := eh[4]
		stored := int64(binary.BigEndian.Uint64(eh[5:]))
		ttl := binary.BigEndian.Uint32(eh[13:])
		stale := binary.BigEndian.Uint32(eh[17:])
		n := int(binary.BigEndian.Uint16(eh[21:]))
		off += entryHeaderLen
		if off+n > len(body) {
			return nil, 0, fmt.Errorf("%w: entry %d truncated", errCorrupt, i)
		}
		if flags&^(flagDO|flagCD) != 0 || ttl > maxTTLLimit || stale > maxTTLLimit {
			return nil, 0, fmt.Errorf("%w: entry %d has invalid fields", errCorrupt, i)
		}
		wire := append([]byte(nil), body[off:off+n]...)
		off += n
		e, why := entryFromWire(wire, ns, flags, stored, ttl, stale)
		if e == nil {
			return nil, 0, fmt.Errorf("%w: entry %d: %s", errCorrupt, i, why)
		}
		if fresh, inStale := e.servable(nowN); !fresh && !inStale {
			dropped++
			continue
		}
		entries = append(entries, e)
	}
	if off != len(body) {
		return nil, 0, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(body)-off)
	}
	return entries, dropped, nil
}

// SaveSnapshot writes every entry to path atomically: a temporary file in
// the same directory, fsync, rename, fsync of the directory. It returns the
// number of entries written.
func (s *Store) SaveSnapshot(path string) (int, error) {
	entries := s.all()
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
	if err := atomicfile.Write(path, 0o600, func(w io.Writer) error { return encodeSnapshot(w, entries, s.now()) }); err != nil {
		return 0, fmt.Errorf("save snapshot: %w", err)
	}
	snapshotSaved.Set(float64(len(entries)))
	snapshotTimestamp.Set(float64(s.now().Unix()))
	return len(entries), nil
}

// LoadSnapshot restores entries from path into the store and returns how
// many it restored. A missing file restores nothing and is no error.
func (s *Store) LoadSnapshot(path string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open snapshot: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSnapshotSize+1))
	if err != nil {
		return 0, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if len(b) > maxSnapshotSize {
		return 0, fmt.Errorf("snapshot %s: larger than %d bytes", path, maxSnapshotSize)
	}
	entries, _, err := decodeSnapshot(b, s.now())
	if err != nil {
		return 0, fmt.Errorf("snapshot %s: %w", path, err)
	}
	n := 0
	for _, e := range entries {
		if s.put(e) {
			n++
		}
	}
	snapshotRestored.Set(float64(n))
	return n, nil
}

// snapshotter runs the periodic save of the process-wide store.
type snapshotter struct {
	mu       sync.Mutex
	path     string
	every    time.Duration
	stop     chan struct{}
	done     chan struct{}
	restored bool
}

// startSnapshots restores the snapshot the first time it is called for this
// store, then (re)starts the periodic save with path and every. An empty
// path stops periodic saving.
func (s *Store) startSnapshots(path string, every time.Duration) {
	sn := &s.snap
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if !sn.restored && path != "" {
		sn.restored = true
		start := time.Now()
		n, err := s.LoadSnapshot(path)
		if err != nil {
			log.Warningf("Ignoring cache snapshot: %v", err)
		} else if n > 0 {
			log.Infof("Restored %d cache entries from %s in %s", n, path, time.Since(start).Round(time.Millisecond))
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
			if _, err := s.SaveSnapshot(path); err != nil {
				log.Errorf("Periodic cache snapshot: %v", err)
			}
		}
	}
}

// finalSnapshot stops the periodic save and writes the snapshot once more.
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
