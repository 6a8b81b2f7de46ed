package nodecache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
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
	if err != nil || got != 2 {
		t.Fatalf("load: %d entries, %v; want 2 (expired one dropped)", got, err)
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
		"truncated": {good[:len(good)-7], errChecksum},
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
	if n, err := r.LoadSnapshot(path); err == nil || n != 0 || r.Len() != 0 {
		t.Fatalf("truncated file: restored %d, err %v", n, err)
	}
	// A missing file is a first start, not an error.
	if n, err := r.LoadSnapshot(filepath.Join(t.TempDir(), "none")); err != nil || n != 0 {
		t.Fatalf("missing file: %d, %v", n, err)
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
