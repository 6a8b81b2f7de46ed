package delayproxy

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestSchedulerPrecision checks the release of 1 ms holds: never early, and
// late by less than Go's timers are (they round up to the next millisecond
// tick of an idle runtime).
func TestSchedulerPrecision(t *testing.T) {
	s, err := NewScheduler()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var h Histogram
	var early int
	for range 300 {
		start := time.Now()
		s.Sleep(time.Millisecond)
		d := time.Since(start)
		if d < time.Millisecond {
			early++
		}
		h.Record(d)
	}
	st := h.Stats()
	t.Logf("Sleep(1ms) x300: %s", st)
	if early > 0 {
		t.Errorf("%d releases before their due time", early)
	}
	if st.P50US < 1000 || st.P50US > 1300 {
		t.Errorf("p50 hold %.0fµs, want 1000-1300µs", st.P50US)
	}
}

func TestSchedulerOrder(t *testing.T) {
	s, err := NewScheduler()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := time.Now().Add(5 * time.Millisecond)
	const n = 500
	offsets := rand.Perm(n)
	var mu sync.Mutex
	var got []int
	var wg sync.WaitGroup
	wg.Add(n)
	for _, o := range offsets {
		s.At(base.Add(time.Duration(o)*10*time.Microsecond), func() {
			mu.Lock()
			got = append(got, o)
			mu.Unlock()
			wg.Done()
		})
	}
	wg.Wait()
	if !slices.IsSorted(got) {
		t.Errorf("callbacks ran out of due order: %v", got)
	}
}

// TestSchedulerEarlierItem checks that an item due before the armed one is
// not held until the armed one.
func TestSchedulerEarlierItem(t *testing.T) {
	s, err := NewScheduler()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.After(time.Hour, func() {})
	start := time.Now()
	s.Sleep(2 * time.Millisecond)
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("2ms sleep behind a 1h item took %v", d)
	}
}

func TestSchedulerClose(t *testing.T) {
	s, err := NewScheduler()
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	s.After(time.Hour, func() { close(ran) })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	default:
		t.Fatal("scheduler goroutine still running after Close")
	}
	select {
	case <-ran:
	default:
		t.Error("pending callback not run by Close")
	}
	// After Close, callbacks run at once on the caller's goroutine.
	done := false
	s.After(time.Hour, func() { done = true })
	if !done {
		t.Error("After on a closed scheduler did not run its callback")
	}
	s.Close()
}
