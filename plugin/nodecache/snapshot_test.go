package nodecache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestSnapshotRoundTrip(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	old := now.Add(-100 * time.Second)
	s.put(testEntry(t, 1, "fresh.example.org.", 3600, old)) // fresh: 3500 s left
	s.put(testEntry(t, 1, "stale.example.org.", 60, old))   // within its 3600 s stale window
	gone := testEntry(t, 1, "gone.example.org.", 60, old)   // past TTL + stale window 30 s later
	gone.stale = 50
	s.put(gone)
	dead := testEntry(t, 1, "dead.example.org.", 60, old) // past TTL + stale window already: not saved
	dead.stale = 10
	s.put(dead)
	path := filepath.Join(t.TempDir(), "sub", "cache.snapshot")
	n, err := s.SaveSnapshot(path)
	if err != nil || n != 3 {
		t.Fatalf("save: %d entries, %v", n, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp")); len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}

	r := NewStore(8 << 20)
	r.clock = func() time.Time { return now.Add(30 * time.Second) }
	got, err := r.LoadSnapshot(path)
	if err != nil || got.kept != 2 || got.read != 3 || got.expired != 1 {
		t.Fatalf("load: %+v, %v; want 2 of 3 kept (expired one dropped)", got, err)
	}
	e := lookup(r, 1, "fresh.example.org.")
	if e == nil || e.remaining(now.Add(30*time.Second).UnixNano()) != 3470 {
		t.Fatalf("restored entry did not keep its age: %+v", e)
	}
	if fresh, stale := lookup(r, 1, "stale.example.org.").servable(now.Add(30 * time.Second).UnixNano()); fresh || !stale {
		t.Fatalf("stale entry restored as fresh=%v stale=%v", fresh, stale)
	}
	if lookup(r, 1, "gone.example.org.") != nil {
		t.Fatal("entry past TTL + stale window restored")
	}
	if !bytes.Equal(e.wire, lookup(s, 1, "fresh.example.org.").wire) {
		t.Fatal("restored wire differs")
	}
}

func TestSnapshotRejectsDamage(t *testing.T) {
	s := NewStore(8 << 20)
	now := time.Now()
	for _, name := range []string{"a.example.org.", "b.example.org.", "c.example.org."} {
		s.put(testEntry(t, 1, name, 600, now))
	}
	var buf bytes.Buffer
	if err := encodeSnapshot(&buf, s.all(), now); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	if entries, _, err := decodeSnapshot(good, now); err != nil || len(entries) != 3 {
		t.Fatalf("good snapshot: %d entries, %v", len(entries), err)
	}
	flip := append([]byte(nil), good...)
	flip[len(flip)/2] ^= 0x40
	badVersion := append([]byte(nil), good...)
	badVersion[9] = 9
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":     {nil, errForeign},
		"foreign":   {[]byte("#!/bin/sh\necho this is not a snapshot at all\n"), errForeign},
		"truncated": {good[:len(good)-7], errCorrupt},
		"bit flip":  {flip, errChecksum},
		"version":   {badVersion, errVersion},
	} {
		if _, _, err := decodeSnapshot(tc.b, now); !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", name, err, tc.want)
		}
	}

	// LoadSnapshot reports damage as an error and restores nothing.
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	if err := os.WriteFile(path, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	r := NewStore(8 << 20)
	if st, err := r.LoadSnapshot(path); err == nil || st.kept != 0 || r.Len() != 0 {
		t.Fatalf("truncated file: restored %+v, err %v", st, err)
	}
	// A missing file is a first start, not an error.
	if st, err := r.LoadSnapshot(filepath.Join(t.TempDir(), "none")); err != nil || st.kept != 0 {
		t.Fatalf("missing file: %+v, %v", st, err)
	}
}

func TestPeriodicSnapshot(t *testing.T) {
	s := NewStore(8 << 20)
	s.put(testEntry(t, 1, "periodic.example.org.", 600, time.Now()))
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	s.startSnapshots(path, time.Second)
	defer s.finalSnapshot()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			entries, _, err := decodeSnapshot(b, time.Now())
			if err != nil || len(entries) != 1 {
				t.Fatalf("periodic snapshot: %d entries, %v", len(entries), err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic snapshot after 5 s with a 1 s interval")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeBigSnapshot writes a valid snapshot of n distinct fresh names to path
// as the format above says, streaming (the test must not hold n entries).
func writeBigSnapshot(t *testing.T, path string, n int, now time.Time) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	crc := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	var hdr [headerLen]byte
	copy(hdr[:], snapshotMagic)
	binary.BigEndian.PutUint16(hdr[8:], snapshotVersion)
	binary.BigEndian.PutUint32(hdr[12:], uint32(n))
	binary.BigEndian.PutUint64(hdr[16:], uint64(now.UnixNano()))
	w.Write(hdr[:])
	tmpl := testEntry(t, 1, "n0000000.big.example.org.", 3600, now)
	wire := append([]byte(nil), tmpl.wire...)
	// The name's first label is at offset 12 (length byte) + 1; the
	// answer's owner name is a compression pointer to it.
	var eh [entryHeaderLen]byte
	for i := range n {
		copy(wire[13:21], fmt.Sprintf("n%07d", i))
		binary.BigEndian.PutUint32(eh[0:], uint32(tmpl.ns))
		eh[4] = tmpl.flags
		binary.BigEndian.PutUint64(eh[5:], uint64(now.UnixNano()))
		binary.BigEndian.PutUint32(eh[13:], tmpl.ttl)
		binary.BigEndian.PutUint32(eh[17:], tmpl.stale)
		binary.BigEndian.PutUint16(eh[21:], uint16(len(wire)))
		w.Write(eh[:])
		w.Write(wire)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	if _, err := f.Write(sum[:]); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestRestoreOfABigSnapshotIsBounded restores a valid snapshot many times
// the budget: the restore keeps what fits, and neither its allocations nor
// its time grow with the file. (It used to read the whole file and decode
// every entry first: a 239 MB snapshot into 64 MiB peaked at 1.06 GB.)
// LOCALDNS_BIG_SNAPSHOT=N sets the number of entries (default 300000).
func TestRestoreOfABigSnapshotIsBounded(t *testing.T) {
	n := 300000
	if v := os.Getenv("LOCALDNS_BIG_SNAPSHOT"); v != "" {
		fmt.Sscan(v, &n)
	}
	const budget = 4 << 20
	budgetBytes := int64(budget)
	if v := os.Getenv("LOCALDNS_BIG_SNAPSHOT_BUDGET"); v != "" {
		fmt.Sscan(v, &budgetBytes)
	}
	now := time.Now()
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	size := writeBigSnapshot(t, path, n, now)

	s := NewStore(budgetBytes)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()
	start := time.Now()
	st, err := s.LoadSnapshot(path)
	kept := st.kept
	took := time.Since(start)
	close(stop)
	<-sampled
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	peakGrowth := int64(peak.Load()) - int64(before.HeapAlloc)
	t.Logf("restored %d of %d entries (%d MB file) into %d MiB in %s: allocated %d MiB during the restore, sampled heap peak +%d MiB",
		kept, n, size>>20, budgetBytes>>20, took.Round(time.Millisecond), allocated>>20, peakGrowth>>20)
	if kept == 0 || s.Len() != kept || s.Bytes() > budgetBytes {
		t.Fatalf("kept %d, store holds %d entries in %d bytes of a %d budget", kept, s.Len(), s.Bytes(), budgetBytes)
	}
	if limit := uint64(budgetBytes) + 4<<20; allocated > limit {
		t.Errorf("the restore allocated %d bytes, more than the budget plus 4 MiB (%d)", allocated, limit)
	}
	if took > 10*time.Second {
		t.Errorf("the restore took %s", took)
	}
}

// TestRestoreRefusesWhatIsNotASnapshotFile: a FIFO (which would block the
// start for good), a symbolic link to /dev/zero (an endless read), a large
// garbage file and a file past the size limit are refused at once, with
// an error that says why, and restore nothing.
func TestRestoreRefusesWhatIsNotASnapshotFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	huge := filepath.Join(dir, "huge")
	for path, size := range map[string]int64{garbage: 1 << 30, huge: maxSnapshotSize + 1} {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("LDNSCACH-but-then-garbage")
		if err := f.Truncate(size); err != nil { // sparse: costs no disk
			t.Fatal(err)
		}
		f.Close()
	}
	for _, tc := range []struct {
		path string
		want error
		says string
	}{
		{fifo, errNotRegular, "named pipe"},
		{zero, errNotRegular, "symbolic link"},
		{garbage, errVersion, "version"},
		{huge, errTooLarge, "too large"},
		{t.TempDir(), errNotRegular, "directory"},
	} {
		s := NewStore(8 << 20)
		done := make(chan error, 1)
		go func() {
			_, err := s.LoadSnapshot(tc.path)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%s: %v, want %v saying %q", filepath.Base(tc.path), err, tc.want, tc.says)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: restore still running after 2 s", filepath.Base(tc.path))
		}
		if s.Len() != 0 {
			t.Errorf("%s: %d entries restored", filepath.Base(tc.path), s.Len())
		}
	}
}

// TestTruncatedSnapshotRestoresNothing cuts a valid snapshot at every
// point of its last entry and trailer: the restore fails and the store is
// unchanged (entries read before the damage are not kept).
func TestTruncatedSnapshotRestoresNothing(t *testing.T) {
	now := time.Now()
	src := NewStore(8 << 20)
	for i := range 50 {
		src.put(testEntry(t, 1, fmt.Sprintf("t%d.example.org.", i), 600, now))
	}
	var buf bytes.Buffer
	if err := encodeSnapshot(&buf, src.all(), now); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	for cut := len(good) - 80; cut < len(good); cut++ {
		if err := os.WriteFile(path, good[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		s := NewStore(8 << 20)
		if _, err := s.LoadSnapshot(path); !errors.Is(err, errCorrupt) || s.Len() != 0 {
			t.Fatalf("cut at %d of %d: %v, %d entries restored", cut, len(good), err, s.Len())
		}
	}
}

// TestRestoreKeepsTheMostValuable restores a snapshot into a store a tenth
// its size: the entries asked for again (main queue) are the ones kept.
func TestRestoreKeepsTheMostValuable(t *testing.T) {
	now := time.Now()
	src := NewStore(64 << 20)
	const n = 4000
	for i := range n {
		src.put(testEntry(t, 1, fmt.Sprintf("v%d.example.org.", i), 600, now))
	}
	hot := map[string]bool{}
	for i := 0; i < n; i += 10 {
		name := fmt.Sprintf("v%d.example.org.", i)
		lookup(src, 1, name) // a hit: frequency 1
		hot[name] = true
	}
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	if _, err := src.SaveSnapshot(path); err != nil {
		t.Fatal(err)
	}
	// Room for about a fifth of the entries, so every hot one fits.
	r := NewStore(int64(n/5) * (testEntry(t, 1, "v0.example.org.", 600, now).size))
	st, err := r.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.read != n || st.kept == 0 || st.kept+st.overBudget != n || r.Len() != st.kept {
		t.Fatalf("restore %+v, store holds %d", st, r.Len())
	}
	missing := 0
	for name := range hot {
		if lookup(r, 1, name) == nil {
			missing++
		}
	}
	if missing > len(hot)/20 {
		t.Fatalf("%d of %d hot entries not restored (kept %d of %d)", missing, len(hot), st.kept, n)
	}
}

// TestWallClockStepKeepsFreshness steps the wall clock an hour each way:
// entries in memory keep their age (they count on the monotonic clock), and
// a snapshot saved and restored across the step keeps them too.
func TestWallClockStepKeepsFreshness(t *testing.T) {
	s := NewStore(8 << 20)
	var step atomic.Int64
	s.wall = func() time.Time { return time.Now().Add(time.Duration(step.Load())) }
	s.put(testEntry(t, 1, "step.example.org.", 300, s.now()))
	check := func(st *Store, when string) {
		t.Helper()
		e := lookup(st, 1, "step.example.org.")
		if e == nil {
			t.Fatalf("%s: entry gone", when)
		}
		now := st.now().UnixNano()
		if fresh, _ := e.servable(now); !fresh || e.remaining(now) < 299 {
			t.Fatalf("%s: fresh %v with %d s left, want fresh with 300", when, fresh, e.remaining(now))
		}
	}
	check(s, "before the step")
	for _, d := range []time.Duration{time.Hour, -time.Hour} {
		step.Store(int64(d))
		check(s, fmt.Sprintf("wall clock stepped %s", d))
		// The file holds wall times: saved while the wall clock is off by
		// d, restored by a process that sees the same wall clock.
		path := filepath.Join(t.TempDir(), "cache.snapshot")
		if _, err := s.SaveSnapshot(path); err != nil {
			t.Fatal(err)
		}
		r := NewStore(8 << 20)
		r.wall = s.wall
		if st, err := r.LoadSnapshot(path); err != nil || st.kept != 1 {
			t.Fatalf("restore after a step of %s: %+v, %v", d, st, err)
		}
		check(r, fmt.Sprintf("restored after a step of %s", d))
	}
}

// TestSnapshotLockOneWriter: two stores (two processes, as far as flock is
// concerned: each opens the lock file itself) on one snapshot path; only
// the first writes it, the second says so and does not, until the first
// let go.
func TestSnapshotLockOneWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.snapshot")
	now := time.Now()
	first, second := NewStore(8<<20), NewStore(8<<20)
	first.put(testEntry(t, 1, "first.example.org.", 600, now))
	second.put(testEntry(t, 1, "second.example.org.", 600, now))
	first.startSnapshots(path, time.Hour)
	second.startSnapshots(path, time.Hour)
	if err := second.finalSnapshot(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the instance without the lock wrote the snapshot: %v", err)
	}
	if err := first.finalSnapshot(); err != nil {
		t.Fatal(err)
	}
	r := NewStore(8 << 20)
	if st, err := r.LoadSnapshot(path); err != nil || st.kept != 1 || lookup(r, 1, "first.example.org.") == nil {
		t.Fatalf("snapshot is not the lock holder's: %+v, %v", st, err)
	}
	// The holder is gone: a later instance takes the lock and writes.
	third := NewStore(8 << 20)
	third.put(testEntry(t, 1, "third.example.org.", 600, now))
	third.startSnapshots(path, time.Hour)
	if err := third.finalSnapshot(); err != nil {
		t.Fatal(err)
	}
	if st, err := NewStore(8 << 20).LoadSnapshot(path); err != nil || st.read != 2 {
		t.Fatalf("after the holder left: %+v, %v", st, err)
	}
}
